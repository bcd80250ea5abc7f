import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// Calls opened and cancelled at once, again and again: HTTP/2's "Rapid Reset" (CVE-2023-44487) on SocketIPC's calls.
/// The concurrency limit holds, and beyond its ``CancelAllowance`` (200 cancels at once, 1,000 more a second) the peer's
/// new calls are refused at once, its connection kept and served: cancels are honest too. Only cancels that stop a
/// running handler count; those of refused calls are free.
@Suite("Services: Rapid Reset", .timeLimit(.minutes(2)), .limitedConcurrency)
struct RapidResetTests {
    /// The server's side of the connection, as the handlers see it.
    final class ServerSide: Sendable {
        let connection = Mutex<Connection?>(nil)
        let started = AsyncStream<Void>.makeStream()
    }

    /// A router whose one method blocks until cancelled; `maximumConcurrentCalls` high enough that only the cancel
    /// allowance refuses calls.
    static func router(_ side: ServerSide, maximumConcurrentCalls: Int = 100) -> ServiceRouter {
        var router = ServiceRouter()
        router.maximumConcurrentCalls = maximumConcurrentCalls
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
        try await peer.write(callsPeerHelloBytes + callOpenBytes(id: 1, method: Block.name) + messageBytes(id: 1, json: "\"x\""))
        #expect(try await peer.read(exactly: 8) == serverHelloBytes)
        for await _ in side.started.stream { break }
        return try #require(side.connection.withLock { $0 })
    }

    /// Reads whole frames in bulk, on a thread of its own, until a pong; fails after 30 s without one.
    static func readUntilPong(_ peer: RawSocket) async throws -> [WireFrame] {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while ContinuousClock.now < deadline {
            let got = try await peer.readAvailable(for: .milliseconds(50))
            bytes += got.bytes
            var whole = 0
            while whole + 4 <= bytes.count {
                let length = bytes[whole..<whole + 4].reduce(0) { $0 << 8 | Int($1) }
                guard whole + 4 + length <= bytes.count else { break }
                whole += 4 + length
            }
            let frames = try parseFrames(bytes[..<whole])
            if frames.contains(where: { $0.kind == 0x0c }) || got.closed { return frames }
        }
        throw RawSocketError.failed("no pong within 30 s", 0)
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

    /// The end frames among `answers` that refuse a call for its peer's cancels, with `text` in their message.
    static func refusals(_ answers: [WireFrame], saying text: String) -> [WireFrame] {
        answers.filter { frame in
            frame.kind == 0x08 && frame.payload.first == 0x08
                && String(decoding: frame.payload, as: UTF8.self).contains(text)
        }
    }

    @Test("350 calls opened and cancelled in a loop, the server's clock stopped: the first 200 run, the other 150 are refused with resourceExhausted; the connection kept and its ping answered")
    func openAndCancelInALoop() async throws {
        let side = ServerSide()
        try await withServiceTestServer(router: Self.router(side, maximumConcurrentCalls: 10_000)) { server, path in
            server.cancelClock.set(.now)
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let connection = try await Self.openFirstCall(on: peer, side)
            let reader = Task { try await Self.readUntilPong(peer) }
            try await peer.write(Self.pairs(1..<351) + pingBytes(id: 2))
            let answers = try await reader.value
            let kinds: [UInt8] = answers.map(\.kind)
            let ends: [UInt8] = kinds.filter { $0 == 0x08 }
            #expect(kinds.count == ends.count + 1 && kinds.last == 0x0c, "\(answers)")
            let refusals = Self.refusals(answers, saying: "the peer cancels its calls faster")
            #expect(refusals.count == 150)
            #expect(refusals.count == ends.count)
            // The refused calls are the last 150.
            let refusedIDs: [UInt32] = refusals.compactMap(\.id).sorted()
            let lastIDs: [UInt32] = (201..<351).map { UInt32(2 * $0 + 1) }
            #expect(refusedIDs == lastIDs)
            #expect(connection.opensRefusedForCancels == 150)
        }
    }

    @Test("cancels of calls that were refused, or are over, stop no handler and cost nothing: once time has given the allowance back, the peer's calls run again (found by a review: an honest client that cancelled refused calls was held for seconds)")
    func cancelsOfRefusedCallsAreFree() async throws {
        let side = ServerSide()
        try await withServiceTestServer(router: Self.router(side, maximumConcurrentCalls: 10_000)) { server, path in
            let start = ContinuousClock.now
            server.cancelClock.set(start)
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let connection = try await Self.openFirstCall(on: peer, side)
            // 200 calls run and are cancelled (the allowance spent), then 300 are refused and cancelled all the same.
            let reader = Task { try await Self.readUntilPong(peer) }
            try await peer.write(Self.pairs(1..<501) + pingBytes(id: 2))
            let answers = try await reader.value
            #expect(Self.refusals(answers, saying: "the peer cancels its calls faster").count == 300)
            #expect(connection.opensRefusedForCancels == 300)
            // A fifth of a second gives back 200 (1,000 a second): counting the 300 refused calls' cancels, the peer
            // would still owe 100, and its next call would be refused.
            server.cancelClock.set(start.advanced(by: .milliseconds(200)))
            let next = Task { try await Self.readUntilPong(peer) }
            try await peer.write(callOpenBytes(id: 1003, method: Block.name) + messageBytes(id: 1003, json: "\"x\"") + pingBytes(id: 4))
            let later = try await next.value
            #expect(later.map(\.kind) == [0x0c], "\(later)")
            #expect(connection.opensRefusedForCancels == 300)
        }
    }

    @Test("a peer that connects anew after every 100 calls opened and cancelled does not get the allowance back: its user's 1,000 are shared by its connections")
    func reconnectingPeerSharesItsUsersAllowance() async throws {
        let side = ServerSide()
        try await withServiceTestServer(router: Self.router(side, maximumConcurrentCalls: 10_000)) { server, path in
            server.cancelClock.set(.now)
            for round in 0..<10 {
                let peer = try await RawSocket.connect(to: path)
                defer { peer.close() }
                try await peer.write(callsPeerHelloBytes + Self.pairs(0..<100) + pingBytes(id: 2))
                #expect(try await peer.read(exactly: 8) == serverHelloBytes)
                let answers = try await Self.readUntilPong(peer)
                let kinds: [UInt8] = answers.map(\.kind)
                #expect(kinds == [0x0c], "round \(round): \(answers)")
            }
            // 1,000 cancels: the user's allowance is spent, though this connection's own is whole.
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(callsPeerHelloBytes + Self.pairs(0..<1) + pingBytes(id: 2))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let answers = try await Self.readUntilPong(peer)
            let refusals = Self.refusals(answers, saying: "the peer's user cancels its calls faster")
            let refusedIDs: [UInt32] = refusals.compactMap(\.id)
            #expect(refusedIDs == [1], "\(answers)")
            // Time passes (5,000 a second): the user may open calls again.
            server.cancelClock.set(.now.advanced(by: .seconds(1)))
            try await peer.write(Self.pairs(1..<2) + pingBytes(id: 4))
            let later = try await Self.readUntilPong(peer)
            let laterKinds: [UInt8] = later.map(\.kind)
            #expect(laterKinds == [0x0c], "\(later)")
        }
    }
}
