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

/// Descriptors this side queues to send wait in its own table until the peer's socket takes them: a peer that asks for
/// replies carrying descriptors and reads none is closed (going-away `0x05`) before this side holds more than its
/// bound of them (found by a review: a server that answered each request with a descriptor duplicated 19,970 of them
/// in a second for a peer that read nothing, and every other peer was refused).
@Suite("Descriptors queued to send are bounded", .timeLimit(.minutes(5)), .limitedConcurrency)
struct OutgoingDescriptorBoundTests {
    /// Answers every request with its payload and, where descriptors travel, a descriptor of `/dev/null`; reports
    /// why its connection closed.
    struct NullReplier: ConnectionHandler {
        static let null = try! FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        let closed: AsyncStream<SocketIPCError?>.Continuation

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            if connection.passesDescriptors {
                reply.succeed(request, descriptors: [Self.null])
            } else {
                reply.succeed(request)
            }
        }

        func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
            self.closed.yield(error)
        }
    }

    @Test("a peer that reads none of 4,000 replies carrying a descriptor is closed with going-away 0x05, and the next client is served")
    func peerThatReadsNothingIsClosed() async throws {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        // A small send buffer, so that the peer's socket is full after a few hundred replies, and a short flush at
        // the close (the peer reads nothing).
        options.socketSendBufferSize = 64 * 1024
        options.closeTimeout = .seconds(1)
        let (closes, closed) = AsyncStream.makeStream(of: SocketIPCError?.self)
        try await withFramedTestServer(
            configure: { $0.connection = options },
            makeHandler: { NullReplier(closed: closed) }
        ) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // Hello: calls and descriptors.
            try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            _ = try await peer.read(exactly: 8)
            // 4,000 requests, and not a byte read: their replies fill the peer's socket, and the rest of their
            // descriptors wait in the server.
            var requests: [UInt8] = []
            for id in 1...4_000 { requests += frameBytes(kind: 0x02, id: UInt32(id), payload: [0x61]) }
            try await peer.write(requests)
            // The server shuts the connection down (the peer's socket hangs up for reading) while the peer has still
            // read nothing. Before, it kept every descriptor and the connection open, and this waited in vain.
            let pollReadHangUp: Int16 = 0x2000  // POLLRDHUP, which Glibc's module leaves out
            var hungUp = pollfd(fd: peer.descriptor, events: pollReadHangUp, revents: 0)
            #expect(poll(&hungUp, 1, 20_000) == 1, "the server kept the connection of a peer that reads nothing")
            // The server closed it as resource exhausted (its going-away 0x05 waits behind replies the peer never
            // read, and may not reach it).
            var reasons = closes.makeAsyncIterator()
            let reason = await reasons.next()
            #expect(reason??.code == .resourceExhausted, "\(String(describing: reason))")
            // Another client is served.
            let answer = try await Client.withConnection(to: path) { connection in
                try await connection.request(ByteBuffer(string: "ping"))
            }
            #expect(String(buffer: answer) == "ping")
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
