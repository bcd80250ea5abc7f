import Logging
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Refused connections are reported", .timeLimit(.minutes(5)), .limitedConcurrency)
struct RefusalReportingTests {
    /// A refusal as `onConnectionRefused` reports it.
    struct Refusal: Sendable {
        var peer: PeerCredentials?
        var error: SocketIPCError
    }

    @Test("onConnectionRefused and the log report a peer the authorization policy refused, with its uid and pid")
    func policyRefusal() async throws {
        let (refusals, refusal) = AsyncStream.makeStream(of: Refusal.self)
        let log = CapturedLog()
        try await withFramedTestServer(
            configure: {
                $0.authorization = .users([UInt32.max - 1])  // nobody runs as that user: everyone is refused
                $0.onConnectionRefused = { peer, error in refusal.yield(Refusal(peer: peer, error: error)) }
            },
            logger: log.logger(level: .notice),
            makeHandler: { EchoHandler() }
        ) { _, path in
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
            #expect(error?.code == .unauthorized)
            var reported = refusals.makeAsyncIterator()
            let report = try #require(await reported.next())
            #expect(report.error.code == .unauthorized)
            #expect(report.peer?.processID == getpid())
            #expect(report.peer?.userID == geteuid())
            #expect(report.error.message.contains("\(getpid())"), "\(report.error.message)")
        }
        let lines = log.entries.withLock { $0 }.filter { $0.message.hasPrefix("refusing connection") }
        let line = try #require(lines.first)
        #expect(line.level == .notice)
        #expect(line.metadata["socketipc.peer.uid"] == "\(geteuid())")
        #expect(line.metadata["socketipc.peer.pid"] == "\(getpid())")
        #expect(line.metadata["socketipc.reason"] != nil)
    }

    @Test("onConnectionRefused reports a connection refused at the connection limit as resourceExhausted")
    func limitRefusal() async throws {
        let (refusals, refusal) = AsyncStream.makeStream(of: Refusal.self)
        try await withFramedTestServer(
            configure: {
                $0.maximumConnections = 1
                $0.onConnectionRefused = { peer, error in refusal.yield(Refusal(peer: peer, error: error)) }
            },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let admitted = try await Client.connect(to: path)
            defer { admitted.close() }
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
            var reported = refusals.makeAsyncIterator()
            let report = try #require(await reported.next())
            #expect(report.error.code == .resourceExhausted)
            #expect(report.error.message.contains("maximumConnections"), "\(report.error.message)")
            #expect(report.peer?.processID == getpid())
        }
    }
}
