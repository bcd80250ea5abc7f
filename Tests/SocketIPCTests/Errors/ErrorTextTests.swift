import NIOCore
import NIOEmbedded
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How errors of other libraries read inside SocketIPC's messages and logs (``errorText(_:)``).
@Suite("Errors of other libraries as text", .timeLimit(.minutes(1)))
struct ErrorTextTests {
    @Test("SwiftNIO's IOError reads without its unbalanced parenthesis and with the system call's name, not the Swift function's signature (found by a review), worded as SocketIPC words a failed system call")
    func ioErrorBalanced() {
        let reset = IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)")
        #expect(errorText(reset) == "read: Connection reset by peer (errno \(ECONNRESET))")
        let closedPipe = IOError(errnoCode: EPIPE, reason: "write")
        #expect(errorText(closedPipe) == "write: Broken pipe (errno \(EPIPE))")
        #expect(!errorText(reset).contains("peer)"))
    }

    @Test("SwiftNIO's I/O on a closed channel reads as the closed connection it is")
    func ioOnClosedChannel() {
        #expect(errorText(ChannelError.ioOnClosedChannel) == "the connection was closed")
        #expect(errorText(ChannelError.alreadyClosed) == "\(ChannelError.alreadyClosed)")
    }

    @Test("other errors read as their own description")
    func otherErrors() {
        let error = SocketIPCError(.connectionClosed, "gone")
        #expect(errorText(error) == "\(error)")
        #expect(errorText(CancellationError()) == "CancellationError()")
    }

    @Test("an EOF-style message the server did not take says why in the library's words, not SwiftNIO's (found by a review: `write(descriptor:pointer:size:): Broken pipe) (errno: 32))` reached `send --eof`)")
    func eofNotDeliveredInOwnWords() throws {
        let channel = EmbeddedChannel()
        let tracker = EOFDeliveryTracker()
        try channel.pipeline.syncOperations.addHandler(tracker)
        channel.pipeline.fireErrorCaught(IOError(errnoCode: EPIPE, reason: "write(descriptor:pointer:size:)"))
        let error = try #require(tracker.undelivered(path: "/tmp/e.sock"))
        #expect(error.message.contains("(write: Broken pipe (errno \(EPIPE)));"), "\(error.message)")
        #expect(!error.message.contains("descriptor:"), "\(error.message)")
        _ = try? channel.finish()
    }
}
