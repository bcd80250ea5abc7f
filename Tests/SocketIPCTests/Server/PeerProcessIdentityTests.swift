import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

/// Issue 13, section 5: a server whose policy looks at the peer process reads its control group through a pidfd
/// (`SO_PEERPIDFD`, no pid-reuse race) and its security label (`SO_PEERSEC`); handlers see them in the credentials.
@Suite("The peer process's identity", .timeLimit(.minutes(5)), .limitedConcurrency)
struct PeerProcessIdentityTests {
    /// This process's cgroup v2 path, as /proc/self/cgroup gives it.
    static func ownControlGroup() throws -> String {
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/cgroup"))
        defer { try? handle.close() }
        let text = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("0::") })
        return String(line.dropFirst(3))
    }

    /// This process's security label, as /proc/self/attr/current gives it; `nil` when no LSM labels it.
    static func ownSecurityLabel() -> String? {
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/attr/current") else { return nil }
        defer { try? handle.close() }
        let text = String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines.union(CharacterSet(charactersIn: "\0")))
        return text.isEmpty ? nil : text
    }

    /// Replies with what the server knows of the peer: `CONTROL-GROUP|LABEL` (`-` for none).
    struct IdentityHandler: ConnectionHandler {
        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            let peer = connection.peer
            reply.succeed(ByteBuffer(string: "\(peer?.controlGroup ?? "-")|\(peer?.securityLabel ?? "-")"))
        }
    }

    #if os(Linux)
    @Test("a policy on the control group serves this process, and the handler sees its control group and label")
    func servesOwnControlGroup() async throws {
        let group = try Self.ownControlGroup()
        try await withFramedTestServer(
            configure: { $0.authorization = .sameUser && .controlGroup(under: group) },
            makeHandler: { IdentityHandler() }
        ) { _, path in
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer()) }
            #expect(String(buffer: reply) == "\(group)|\(Self.ownSecurityLabel() ?? "-")")
        }
    }

    @Test("a policy on a systemd unit this process is not in refuses it as unauthorized, naming the reason")
    func refusesOtherUnit() async throws {
        let refusals = RefusalLog()
        try await withFramedTestServer(
            configure: {
                $0.authorization = .systemdUnits(["socketipc-no-such-unit.service"])
                $0.onConnectionRefused = { _, error in refusals.append(error) }
            },
            makeHandler: { IdentityHandler() }
        ) { _, path in
            let error = await #expect(throws: SocketIPCError.self) {
                try await Client.withConnection(to: path) { try await $0.request(ByteBuffer()) }
            }
            #expect(error?.code == .unauthorized)
        }
        let reasons = refusals.all.map(\.message)
        #expect(reasons.count == 1)
        #expect(reasons.first?.contains("socketipc-no-such-unit.service") == true, "\(reasons)")
    }

    @Test("without a policy that needs it, the control group is not read")
    func notReadByDefault() async throws {
        try await withFramedTestServer(makeHandler: { IdentityHandler() }) { _, path in
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer()) }
            #expect(String(buffer: reply) == "-|-")
        }
    }
    #endif
}

/// The errors a server's `onConnectionRefused` reported.
final class RefusalLog: Sendable {
    private let errors = Mutex<[SocketIPCError]>([])

    func append(_ error: SocketIPCError) { self.errors.withLock { $0.append(error) } }

    var all: [SocketIPCError] { self.errors.withLock { $0 } }
}
