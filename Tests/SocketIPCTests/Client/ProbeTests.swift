import NIOCore
import NIOPosix
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Probing a socket file", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ProbeTests {
    @Test("a framed server is recognised by its hello, with its protocol version and credentials")
    func framedServer() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let result = try await Client.probe(path, timeout: .seconds(30))
            #expect(result.style == .framed(protocolVersion: 1))
            #if os(Linux)
            #expect(result.peer?.processID == getpid())
            #endif
        }
    }

    @Test("an EOF-style server reads an empty message and answers at once; the probe sends it nothing else")
    func eofServer() async throws {
        let received = Mutex<[Int]>([])
        let handler = EOFMessageHandler.onEventLoop { message, _ in
            received.withLock { $0.append(message.readableBytes) }
            return ByteBuffer(string: "ok")
        }
        try await withEOFTestServer(handler: handler) { _, path in
            // A long timeout: the answer must come from the server closing, not from the clock.
            let result = try await Client.probe(path, timeout: .seconds(30))
            #expect(result.style == .endOfFile(acknowledgementLength: 2))
        }
        #expect(received.withLock { $0 } == [0], "the handler saw one empty message, not a hello")
    }

    @Test("a listener that says nothing is silent")
    func silentListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try RawListener(path: path)
            defer { listener.close() }
            // Nobody accepts: the connection waits in the backlog and nothing comes back.
            let result = try await Client.probe(path, timeout: .milliseconds(100))
            #expect(result.style == .silent)
        }
    }

    @Test("a server that sends bytes other than a hello and keeps the connection open speaks another protocol")
    func otherProtocol() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/other.sock"
            let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelOption(.allowRemoteHalfClosure, value: true)  // stays open after the probe's half-close
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(GreetingHandler())
                    }
                }
                .bind(unixDomainSocketPath: path)
                .get()
            // "Another protocol" is decided when the timeout ends with the connection open; the greeting comes at
            // once, so a generous timeout only makes the test longer, never flaky.
            let result = try await Client.probe(path, timeout: .seconds(3))
            #expect(result.style == .otherProtocol)
            try await server.close()
        }
    }

    @Test("nothing listening is a clear error naming the path")
    func nothingListens() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/nobody.sock"
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.probe(path) }
            #expect(error?.code == .connectionRefused)
            #expect(error?.path == path)
        }
    }
}

/// A bare listening Unix domain socket that never accepts.
private final class RawListener: Sendable {
    let descriptor: Int32

    init(path: String) throws {
        self.descriptor = makeUnixStreamSocket()
        guard withSocketAddress(path, { bind(self.descriptor, $0, $1) }) == 0, listen(self.descriptor, 8) == 0 else {
            let code = errno
            closeDescriptor(self.descriptor)
            throw RawSocketError.failed("bind", code)
        }
    }

    func close() {
        closeDescriptor(self.descriptor)
    }
}

/// Greets every connection the way an HTTP server answers a bad request, and keeps it open.
private final class GreetingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 400 Bad Request\r\n")), promise: nil)
        context.fireChannelActive()
    }
}
