import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// A peer may send each call one message beyond the call's credit (PROTOCOL.md, "Flow control"): across a
/// connection's calls, such messages held for readers that have not taken them pause reading beyond the maximum
/// message size, as unanswered requests do, and never close an honest connection.
@Suite("Services: large call messages held across a connection's calls", .timeLimit(.minutes(5)), .limitedConcurrency)
struct HeldCallMessagesTests {
    /// The maximum message size of both sides: the budget of large messages held across a connection's calls.
    static let maximum = 256 * 1024

    @Test("large messages held for readers pause reading beyond the maximum message size (one always passes); pings are still answered, and readers that take them resume it")
    func heldLargeMessagesPauseReading() async throws {
        let gate = Gate()
        let size = 100 * 1024
        let calls: [UInt32] = [1, 3, 5, 7, 9, 11, 13, 15]
        try await withServiceTestServer(
            router: gatedRouter(gate),
            configure: { $0.connection.maximumMessageSize = Self.maximum }
        ) { server, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // Eight calls whose handlers do not read yet, each with one message of 100 KiB (beyond its 64 KiB of
            // credit, so it goes alone) and its half-close; then a ping, answered while reading is paused.
            var stream = serverHelloBytes
            for id in calls {
                stream += callOpenBytes(id: id, method: Gated.name)
                stream += frameBytes(kind: 0x07, id: id, payload: Array("\"\(String(repeating: "x", count: size - 2))\"".utf8))
                stream += frameBytes(kind: 0x08, id: id, payload: [0, 0, 0, 0])
            }
            try await peer.write(stream + pingBytes(id: 99))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 99, "\(pong)")
            // Everything before the ping was read, and three messages were handed to their calls: 300 KiB is beyond
            // 256 KiB. Before, all eight were (800 KiB), and 100 calls of 16 MiB messages held 1.6 GB.
            let connection = try #require(server.connections.first)
            #expect(connection.heldCallMessageBytes == 3 * size)

            // Once the readers take their messages, reading goes on: every call is answered.
            await gate.open()
            // (Credit comes too, as the handlers take their messages.)
            var frames: [WireFrame] = []
            while frames.filter({ $0.kind == 0x08 }).count < calls.count { frames += try await peer.readFrames(1) }
            let answers = frames.filter { $0.kind == 0x07 }
            #expect(Set(answers.map(\.id)) == Set(calls))
            #expect(answers.allSatisfy { String(decoding: $0.payload, as: UTF8.self) == "\(size - 2)" }, "\(answers)")
            #expect(frames.filter { $0.kind == 0x08 }.count == calls.count)
            #expect(connection.heldCallMessageBytes == 0)
        }
    }

    @Test(
        "while paused for held messages, credit is still read: echo handlers waiting for it to write, each holding its next message, go on",
        .timeLimit(.minutes(1))
    )
    func creditReadWhilePaused() async throws {
        try await withServiceTestServer(
            router: echoRouter(),
            configure: { $0.connection.maximumMessageSize = Self.maximum }
        ) { server, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            var frames = FrameLog(peer: peer)
            let text = Array("\"\(String(repeating: "z", count: 200 * 1024 - 2))\"".utf8)
            try await peer.write(serverHelloBytes)
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // On each of two calls, three messages of 200 KiB, each sent once the server gave credit for the one
            // before. The handler echoes the first (its credit goes below zero), takes the second and waits for
            // credit to echo it, so the third stays held for it: together beyond the budget of 256 KiB.
            for id: UInt32 in [1, 3] {
                try await peer.write(callOpenBytes(id: id, method: EchoText.name) + frameBytes(kind: 0x07, id: id, payload: text))
                for credits in 1...2 {
                    try await frames.read(until: { $0.filter { $0.kind == 0x0a && $0.id == id }.count == credits })
                    try await peer.write(frameBytes(kind: 0x07, id: id, payload: text))
                }
            }
            try await peer.write(pingBytes(id: 99))
            try await frames.read(until: { $0.contains { $0.kind == 0x0c && $0.id == 99 } })
            let connection = try #require(server.connections.first)
            #expect(connection.heldCallMessageBytes == 2 * text.count)
            // Credit for both calls, then their half-closes. Held back by the pause, the credit would never reach
            // the handlers, and the handlers would never take the messages that keep the pause.
            try await peer.write(
                creditBytes(id: 1, increment: 1 << 30) + creditBytes(id: 3, increment: 1 << 30)
                    + frameBytes(kind: 0x08, id: 1, payload: [0, 0, 0, 0]) + frameBytes(kind: 0x08, id: 3, payload: [0, 0, 0, 0])
            )
            try await frames.read(until: { $0.filter { $0.kind == 0x08 }.count == 2 })
            for id: UInt32 in [1, 3] {
                #expect(frames.all.filter { $0.kind == 0x07 && $0.id == id && $0.payload == text }.count == 3)
                #expect(frames.all.contains { $0.kind == 0x08 && $0.id == id && $0.payload.first == 0 })
            }
            #expect(connection.heldCallMessageBytes == 0)
        }
    }

    @Test("bidirectional calls echoing large messages on one connection, beyond the budget together, all finish")
    func echoesBeyondTheBudget() async throws {
        try await withServiceTestServer(
            router: echoRouter(),
            configure: { $0.connection.maximumMessageSize = Self.maximum }
        ) { _, path in
            var configuration = ClientConfiguration()
            configuration.connection.maximumMessageSize = Self.maximum
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.close() }
            // Four calls at once, each writing eight messages of 200 KiB before it reads any echo: each message is
            // beyond its call's window, and together they are far beyond the 256 KiB either side holds for readers.
            // A handler waits for credit to echo before it takes its next message, so a pause that held credit back
            // too would never end.
            let text = String(repeating: "z", count: 200 * 1024)
            let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        try await connection.bidirectionalStreaming(EchoText.self) { writer, responses in
                            async let echoed = {
                                var iterator = responses.makeAsyncIterator()
                                var count = 0
                                for _ in 0..<8 where try await iterator.next() == text { count += 1 }
                                return count
                            }()
                            for _ in 0..<8 { try await writer.write(text) }
                            return try await echoed
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(counts == [8, 8, 8, 8])
        }
    }
}

/// A client-streaming method whose handler reads its messages only once the gate opens, and answers with the
/// length of the last.
private enum Gated: ServiceMethod {
    static let name = "held.gated"
    typealias Request = String
    typealias Response = Int
}

private enum EchoText: ServiceMethod {
    static let name = "held.echo"
    typealias Request = String
    typealias Response = String
}

private func echoRouter() -> ServiceRouter {
    var router = ServiceRouter()
    router.registerBidirectionalStreaming(EchoText.self) { texts, writer, _ in
        for try await text in texts { try await writer.write(text) }
    }
    return router
}

/// The frames a raw peer has read so far.
private struct FrameLog {
    let peer: RawSocket
    var all: [WireFrame] = []

    init(peer: RawSocket) { self.peer = peer }

    /// Reads frames one at a time until `done` holds for all of them.
    mutating func read(until done: ([WireFrame]) -> Bool) async throws {
        while !done(self.all) { self.all += try await self.peer.readFrames(1) }
    }
}

private func gatedRouter(_ gate: Gate) -> ServiceRouter {
    var router = ServiceRouter()
    router.registerClientStreaming(Gated.self) { texts, _ in
        await gate.wait()
        var last = 0
        for try await text in texts { last = text.count }
        return last
    }
    return router
}
