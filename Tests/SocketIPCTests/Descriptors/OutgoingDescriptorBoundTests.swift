#if os(Linux)
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import SystemPackage
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Descriptors this side queues to send wait in its own table until the peer's socket takes them: a reply to a peer
/// that reads none is refused with an error reply once this side holds its bound of them (found by a review: a server
/// that answered each request with a descriptor duplicated 19,970 of them in a second for a peer that read nothing,
/// and every other peer was refused).
@Suite("Descriptors queued to send are bounded", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct OutgoingDescriptorBoundTests {
    /// Answers every request with its payload and, where descriptors travel, a descriptor of `/dev/null`; reports
    /// how many it answered.
    struct NullReplier: ConnectionHandler {
        /// The read end of a pipe of its own, so that its copies are told apart from other tests' (`pipe:[inode]`).
        static let null: FileDescriptor = {
            let (readEnd, writeEnd) = try! FileDescriptor.pipe()
            try? writeEnd.close()
            return readEnd
        }()
        let answered: AsyncStream<Int>.Continuation
        let count = Count()

        final class Count: Sendable {
            let value = Atomic(0)
        }

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            if connection.passesDescriptors {
                reply.succeed(request, descriptors: [Self.null])
            } else {
                reply.succeed(request)
            }
            self.answered.yield(self.count.value.add(1, ordering: .relaxed).newValue)
        }
    }

    @Test("a peer that reads none of 4,000 replies carrying a descriptor gets error replies beyond the bound, the server holds no more descriptors than it, and the next client is served")
    func peerThatReadsNothingIsRefused() async throws {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        // A small send buffer, so that the peer's socket is full after a few hundred replies.
        options.socketSendBufferSize = 64 * 1024
        options.closeTimeout = .seconds(1)
        let (answered, counting) = AsyncStream.makeStream(of: Int.self)
        try await withFramedTestServer(
            configure: { $0.connection = options },
            makeHandler: { NullReplier(answered: counting) }
        ) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // Hello: calls and descriptors.
            try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            _ = try await peer.read(exactly: 8)
            // 4,000 requests, and not a byte read: their replies fill the peer's socket, and the rest of their
            // descriptors wait in the server, up to its bound.
            var requests: [UInt8] = []
            for id in 1...4_000 { requests += frameBytes(kind: 0x02, id: UInt32(id), payload: [0x61]) }
            try await peer.write(requests)
            for await count in answered where count == 4_000 { break }
            // Before the bound, the server held a duplicate for each of them: now the bound, and its own.
            let held = openCopies(of: linkTarget(NullReplier.null))
            #expect(held <= 2_048 + 1, "the server holds \(held) copies of its pipe")
            // Another client is served.
            let answer = try await Client.withConnection(to: path) { connection in
                try await connection.request(ByteBuffer(string: "ping"))
            }
            #expect(String(buffer: answer) == "ping")
            // The peer, reading at last, finds replies, and error replies for the rest.
            var replies = 0
            var refusals = 0
            while replies + refusals < 4_000 {
                for frame in try await peer.readFrames(1) {
                    if frame.kind == 0x03 { replies += 1 }
                    if frame.kind == 0x04 {
                        refusals += 1
                        if refusals == 1 {
                            #expect(String(decoding: frame.payload, as: UTF8.self).contains("wait to be sent"))
                        }
                    }
                }
            }
            #expect(replies >= 2_048)
            #expect(refusals > 0)
        }
    }


    /// Counts the messages it receives, taking 300 µs over each (about 3,000 a second), and closes their descriptors.
    struct SlowSink: ConnectionHandler {
        final class Count: Sendable {
            let value = Atomic<Int>(0)
        }
        let received: Count

        func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
            descriptors.close()
            var pause = timespec(tv_sec: 0, tv_nsec: 300_000)
            nanosleep(&pause, nil)
            self.received.value.add(1, ordering: .relaxed)
        }

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            reply.succeed(request)
        }
    }

    @Test("an honest sender of 3,000 messages with a descriptor each, to a peer that reads them about 3,000 a second, waits for room and is not closed (found by a review: closed after 1,438 sends)")
    func honestSenderWaits() async throws {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        let received = SlowSink.Count()
        let null = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? null.close() }
        try await withFramedTestServer(
            configure: { $0.connection = options },
            makeHandler: { SlowSink(received: received) }
        ) { _, path in
            var configuration = ClientConfiguration()
            configuration.connection = options
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                for _ in 0..<3_000 { try await connection.send(ByteBuffer(string: "x"), descriptors: [null]) }
                // The server has read them all once it answers the request that follows them.
                #expect(String(buffer: try await connection.request(ByteBuffer(string: "done"))) == "done")
            }
            #expect(received.value.load(ordering: .relaxed) == 3_000)
        }
    }
}
#endif
