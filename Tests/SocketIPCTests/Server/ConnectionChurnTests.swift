import CSocketIPCTestSupport
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
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

/// A peer that connects and closes as fast as it can must not hold up the server's other connections: SwiftNIO's
/// event loops run every task queued before they look at their sockets again, and the set-up of each accepted
/// connection was such a task.
@Suite("Connection churn", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectionChurnTests {
    @Test(
        "another user connecting and closing in a loop holds up neither the connections open nor new ones",
        .enabled(if: OtherUser.canOwnFiles, "needs root to connect as another user")
    )
    func churnHoldsUpNobody() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/server.sock"
            // The churning user is refused by the default policy: a refused framed peer still gets a channel (its
            // hello and going-away), so each connection costs a set-up on an event loop.
            chmod(directory, 0o755)
            try await withEchoServer(path: path, configure: { $0.mode = 0o666 }) { _ in
                try await Client.withConnection(to: path) { established in
                    _ = try await established.request(ByteBuffer(string: "before"))
                    let churn = Churn()
                    async let churned = onOwnThread { churn.run(path: path, as: OtherUser.uid) }
                    do {
                        #expect(await eventually { churn.connections.load(ordering: .relaxed) >= 2_000 })
                        let churnedBefore = churn.connections.load(ordering: .relaxed)
                        // Before, each of these waited until the churn ended (a review: 11–14 s, the whole attack),
                        // and a new connection's hello went unread until its handshake timeout.
                        for index in 0..<20 {
                            let reply = try await established.request(ByteBuffer(string: "\(index)"), timeout: .seconds(10))
                            #expect(String(buffer: reply) == "\(index)")
                        }
                        let fresh = try await Client.withConnection(to: path) {
                            try await $0.request(ByteBuffer(string: "new"), timeout: .seconds(10))
                        }
                        #expect(String(buffer: fresh) == "new")
                        #expect(churn.connections.load(ordering: .relaxed) > churnedBefore, "the churn went on meanwhile")
                    } catch {
                        churn.stop.store(true, ordering: .relaxed)
                        _ = try? await churned
                        throw error
                    }
                    churn.stop.store(true, ordering: .relaxed)
                    _ = try await churned
                }
            }
        }
    }
}

/// Connects to a socket and closes at once, in a loop on a thread of its own, until told to stop.
private final class Churn: Sendable {
    let stop = Atomic<Bool>(false)
    let connections = Atomic<Int>(0)

    func run(path: String, as uid: uid_t) {
        while !self.stop.load(ordering: .relaxed) {
            let descriptor = makeUnixStreamSocket()
            if csocketipc_test_connect_as(descriptor, path, uid) == 0 {
                self.connections.add(1, ordering: .relaxed)
            }
            closeDescriptor(descriptor)
        }
    }
}
