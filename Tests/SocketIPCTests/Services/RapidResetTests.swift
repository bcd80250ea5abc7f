import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// Calls opened and cancelled at once, again and again: HTTP/2's "Rapid Reset" (CVE-2023-44487) on SocketIPC's calls.
/// The concurrency limit holds (a cancelled call keeps its slot until its handler ends), but each pair costs the
/// server a handler started and stopped and the peer nothing it must read; beyond an allowance
/// (``WastedCallFrames``) the peer is closed, as HTTP/2 servers close it with `ENHANCE_YOUR_CALM`.
@Suite("Services: Rapid Reset", .timeLimit(.minutes(2)), .limitedConcurrency)
struct RapidResetTests {
    @Test("500 calls opened and cancelled at once are served as usual; 5,000 more close the peer with going-away 0x01; others are served")
    func openAndCancelInALoop() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            func pairs(_ range: Range<Int>) -> [UInt8] {
                range.flatMap { index -> [UInt8] in
                    let id = UInt32(2 * index + 1)
                    return callOpenBytes(id: id, method: Block.name) + cancelBytes(id: id, reason: 0)
                }
            }
            // An honest burst: a client that gives up 500 calls at once (5 times its connection's calls).
            try await peer.write(serverHelloBytes + pairs(0..<500) + pingBytes(id: 2))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            var answers: [WireFrame] = []
            while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await peer.readFrames(1) }
            #expect(answers.allSatisfy { $0.kind == 0x0c || $0.kind == 0x08 }, "\(answers.filter { $0.kind != 0x08 })")

            // The attack: the same, ten times over, without pause.
            try? await peer.write(pairs(500..<5_500))
            let rest = try await peer.readUntilClosed()
            let goingAway = try #require(try parseFrames(rest[...]).last)
            #expect(goingAway.kind == 0x05 && goingAway.payload.first == 0x01, "\(goingAway)")
            let text = String(decoding: goingAway.payload.dropFirst(), as: UTF8.self)
            #expect(text.contains("work for nothing") && text.contains("CVE-2023-44487"), "\(text)")

            let client = try await Client.connect(to: path)
            defer { client.close() }
            #expect(try await client.call(SetValue.self, .init(key: "k", value: "v")))
        }
    }
}
