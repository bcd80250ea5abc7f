import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// `ServiceRouter.maximumConcurrentCallsPerUser`: one user's calls in progress across all of its connections are
/// bounded, not only each connection's; a call beyond is refused with `resourceExhausted` and its connection goes on.
@Suite("Services: calls in progress per user", .timeLimit(.minutes(2)), .limitedConcurrency)
struct CallsPerUserTests {
    /// What the handlers of the blocking method did.
    final class Handlers: Sendable {
        let started = AsyncStream<Void>.makeStream()
        let ended = AsyncStream<Void>.makeStream()
    }

    /// A router whose one method blocks until cancelled: 10 calls per connection, 25 per user.
    static func router(_ handlers: Handlers) -> ServiceRouter {
        var router = ServiceRouter()
        router.maximumConcurrentCalls = 10
        router.maximumConcurrentCallsPerUser = 25
        router.register(Block.self) { request, _ in
            defer { handlers.ended.continuation.yield() }
            handlers.started.continuation.yield()
            try await Task.sleep(for: .seconds(3600))
            return request
        }
        return router
    }

    /// Opens calls `ids` on `peer` and pings: the frames answered before the pong.
    static func open(_ ids: [UInt32], on peer: RawSocket, ping: UInt32) async throws -> [WireFrame] {
        let opens = ids.flatMap { callOpenBytes(id: $0, method: Block.name) + messageBytes(id: $0, json: "\"x\"") }
        try await peer.write(opens + pingBytes(id: ping))
        var answers: [WireFrame] = []
        while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await peer.readFrames(1) }
        return answers.filter { $0.kind != 0x0c }
    }

    /// Whether `frame` ends a call refused for its user's calls in progress.
    static func isUserRefusal(_ frame: WireFrame) -> Bool {
        frame.kind == 0x08 && frame.payload.first == 0x08
            && String(decoding: frame.payload, as: UTF8.self).contains("25 calls of this user are already in progress")
    }

    /// Waits for `count` elements of `stream`.
    static func wait(for count: Int, in stream: AsyncStream<Void>) async {
        var seen = 0
        for await _ in stream {
            seen += 1
            if seen == count { return }
        }
    }

    @Test("three connections of one user open 10 calls each: 25 run, the last 5 are refused with resourceExhausted, every connection still served; once one connection's calls end, its user may open more")
    func boundedAcrossConnections() async throws {
        let handlers = Handlers()
        try await withServiceTestServer(router: Self.router(handlers)) { _, path in
            var peers: [RawSocket] = []
            defer { for peer in peers { peer.close() } }
            for _ in 0..<3 {
                let peer = try await RawSocket.connect(to: path)
                try await peer.write(callsPeerHelloBytes)
                #expect(try await peer.read(exactly: 8) == serverHelloBytes)
                peers.append(peer)
            }
            let ids: [UInt32] = (0..<10).map { UInt32(2 * $0 + 1) }
            #expect(try await Self.open(ids, on: peers[0], ping: 1).isEmpty, "all 10 run")
            #expect(try await Self.open(ids, on: peers[1], ping: 1).isEmpty, "all 10 run")
            await Self.wait(for: 20, in: handlers.started.stream)
            let third = try await Self.open(ids, on: peers[2], ping: 1)
            #expect(third.count == 5 && third.allSatisfy(Self.isUserRefusal), "\(third)")
            #expect(third.compactMap(\.id) == Array(ids.suffix(5)), "the last five are refused")
            await Self.wait(for: 5, in: handlers.started.stream)

            // The first connection closes: its 10 handlers are cancelled and give their places back.
            peers.removeFirst().close()
            await Self.wait(for: 10, in: handlers.ended.stream)
            // A handler's place is given back right after it returns: ask until the call runs (at most a few times).
            var next: UInt32 = 21
            var answers = try await Self.open([next], on: peers[1], ping: 2)
            while !answers.isEmpty, answers.allSatisfy(Self.isUserRefusal), next < 61 {
                next += 2
                answers = try await Self.open([next], on: peers[1], ping: 2)
            }
            #expect(answers.isEmpty, "the user may open calls again: \(answers)")
            await Self.wait(for: 1, in: handlers.started.stream)
        }
    }
}
