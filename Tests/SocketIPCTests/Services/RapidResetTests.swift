import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// Calls opened and cancelled at once, again and again: HTTP/2's "Rapid Reset" (CVE-2023-44487) on SocketIPC's calls.
/// The concurrency limit holds, and beyond its ``CancelAllowance`` (200 cancels at once, 1,000 more a second) the peer's
/// new calls are refused at once, its connection kept and served: cancels are honest too. A peer that goes on
/// cancelling the calls it was refused is read no further until its debt is paid.
@Suite("Services: Rapid Reset", .timeLimit(.minutes(2)), .limitedConcurrency)
struct RapidResetTests {
    /// The server's side of the connection, as the handlers see it.
    final class ServerSide: Sendable {
        let connection = Mutex<Connection?>(nil)
        let started = AsyncStream<Void>.makeStream()
    }

    static func router(_ side: ServerSide) -> ServiceRouter {
        var router = ServiceRouter()
        router.register(Block.self) { request, context in
            side.connection.withLock { $0 = context.connection }
            side.started.continuation.yield()
            try await Task.sleep(for: .seconds(3600))
            return request
        }
        return router
    }

    /// Opens call 1, which runs until the connection closes, and waits until its handler has the server's side of
    /// the connection.
    static func openFirstCall(on peer: RawSocket, _ side: ServerSide) async throws -> Connection {
        try await peer.write(serverHelloBytes + callOpenBytes(id: 1, method: Block.name) + messageBytes(id: 1, json: "\"x\""))
        #expect(try await peer.read(exactly: 8) == serverHelloBytes)
        for await _ in side.started.stream { break }
        return try #require(side.connection.withLock { $0 })
    }

    static func pairs(_ range: Range<Int>) -> [UInt8] {
        range.flatMap { index -> [UInt8] in
            let id = UInt32(2 * index + 1)
            return callOpenBytes(id: id, method: Block.name) + messageBytes(id: id, json: "\"x\"") + cancelBytes(id: id, reason: 0)
        }
    }

    @Test("a connection's first call, then 150 calls opened and cancelled at once, as an honest caller may: none refused")
    func honestBurst() async throws {
        let side = ServerSide()
        try await withServiceTestServer(router: Self.router(side)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let connection = try await Self.openFirstCall(on: peer, side)
            try await peer.write(Self.pairs(1..<151) + pingBytes(id: 2))
            var answers: [WireFrame] = []
            while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await peer.readFrames(1) }
            #expect(connection.opensRefusedForCancels == 0)
            #expect(!answers.contains { $0.kind == 0x05 }, "\(answers.filter { $0.kind == 0x05 })")
        }
    }

    @Test("3,000 calls opened and cancelled in a loop: beyond the allowance refused at once with resourceExhausted; the connection kept and its ping answered")
    func openAndCancelInALoop() async throws {
        let side = ServerSide()
        try await withServiceTestServer(router: Self.router(side)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let connection = try await Self.openFirstCall(on: peer, side)
            // Read as it comes, so that the server's answers (refusals beyond 100 calls) never wait.
            let reader = Task {
                var answers: [WireFrame] = []
                while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await peer.readFrames(1) }
                return answers
            }
            try await peer.write(Self.pairs(1..<3_001) + pingBytes(id: 2))
            let answers = try await reader.value
            #expect(answers.allSatisfy { $0.kind == 0x0c || $0.kind == 0x08 }, "\(answers.filter { $0.kind != 0x08 })")
            #expect(connection.opensRefusedForCancels > 2_000, "\(connection.opensRefusedForCancels)")
            let refusals = answers.filter { frame in
                frame.kind == 0x08 && frame.payload.first == 0x08
                    && String(decoding: frame.payload, as: UTF8.self).contains("cancels its calls faster")
            }
            #expect(refusals.count == connection.opensRefusedForCancels)
        }
    }
}
