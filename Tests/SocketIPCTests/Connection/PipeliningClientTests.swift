import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// An honest client that pipelines many small requests, against a server that answers each at once with a reply
/// larger than the request: many answers are queued within one read batch, which is not the peer failing to read.
/// The bound on answers a peer does not read (``FloodingServerTests``) must leave it alone.
@Suite("An honest client pipelining requests", .timeLimit(.minutes(5)), .limitedConcurrency)
struct PipeliningClientTests {
    @Test("20,000 requests in flight for 1 KiB replies are all answered, and the connection stays open")
    func pipelining() async throws {
        let count = 20_000
        try await withFramedTestServer(makeHandler: { ImmediateReplyHandler(size: 1024) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let failures = Failures()
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<count {
                    group.addTask {
                        do {
                            let reply = try await connection.request(ByteBuffer(string: "k"))
                            if reply.readableBytes != 1024 { failures.list.withLock { $0.append("a reply of \(reply.readableBytes) bytes") } }
                        } catch {
                            failures.list.withLock { if $0.count < 3 { $0.append("\(error)") } }
                        }
                    }
                }
            }
            let seen = failures.list.withLock { $0 }
            #expect(seen.isEmpty, "\(seen); close reason: \(String(describing: connection.closeReason))")
            #expect(connection.isOpen)
        }
    }
}

/// Answers every request at once, inside the read batch, with `size` bytes.
private struct ImmediateReplyHandler: ConnectionHandler, Sendable {
    let size: Int
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(ByteBuffer(repeating: 0x61, count: self.size))
    }
}

private final class Failures: Sendable {
    let list = Mutex<[String]>([])
}
