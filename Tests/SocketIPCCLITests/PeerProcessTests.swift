import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13, section 5: with `holdsPeerProcess`, each connection holds a pidfd of its peer taken when it connected,
/// and the handler can ask whether that very process still runs, read its control group and signal it.
@Suite("A connection's peer process, held by a pidfd", .timeLimit(.minutes(5)), .limitedConcurrency)
struct PeerProcessTests {
    #if os(Linux)
    /// The connections' peer processes, kept for the test to look at.
    final class Held: Sendable {
        let processes = Mutex<[PeerProcess?]>([])
    }

    /// Keeps each requester's peer process and echoes.
    struct HoldingHandler: ConnectionHandler {
        let held: Held

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            self.held.processes.withLock { $0.append(connection.peerProcess) }
            reply.succeed(request)
        }
    }

    /// This process's cgroup v2 path.
    static func ownControlGroup() throws -> String {
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/cgroup"))
        defer { try? handle.close() }
        let text = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        return String(try #require(text.split(separator: "\n").first { $0.hasPrefix("0::") }).dropFirst(3))
    }

    @Test("the handler sees a running peer process with the peer's control group; none without the option")
    func ownProcess() async throws {
        let held = Held()
        try await withFramedTestServer(
            configure: { $0.connection.holdsPeerProcess = true },
            makeHandler: { HoldingHandler(held: held) }
        ) { _, path in
            _ = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "x")) }
        }
        let process = try #require(held.processes.withLock { $0.first } ?? nil)
        #expect(process.processID == getpid())
        #expect(process.isRunning)
        #expect(process.controlGroup() == (try Self.ownControlGroup()))

        let without = Held()
        try await withFramedTestServer(makeHandler: { HoldingHandler(held: without) }) { _, path in
            _ = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "x")) }
        }
        #expect(without.processes.withLock { $0.count == 1 && $0[0] == nil })
    }

    @Test("once the peer process has exited it is not running, its control group is not read, and a signal fails")
    func exitedPeer() async throws {
        let held = Held()
        try await withFramedTestServer(
            configure: { $0.connection.holdsPeerProcess = true },
            makeHandler: { HoldingHandler(held: held) }
        ) { _, path in
            // The peer is a process of its own, which asks once and exits.
            let result = try await runCLI(["request", path, "x"])
            #expect(result.status == 0, "stderr: \(result.error)")
        }
        let process = try #require(held.processes.withLock { $0.first } ?? nil)
        #expect(process.processID != getpid())
        #expect(!process.isRunning)
        #expect(process.controlGroup() == nil)
        #expect(throws: SocketIPCError.self) { try process.signal(SIGTERM) }
    }
    #endif
}
