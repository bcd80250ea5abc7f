import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

@testable import SocketIPCServices

/// A method's own limit on its requests (`ServiceMethod.maximumRequestSize`, as gRPC's `maxRequestMessageBytes`):
/// a larger request ends its call with `invalidMessage`, the connection going on; with strict credit, before a byte
/// of it is sent (before, credit for a message up to the connection's maximum went to any call whose handler waited
/// for its request: 100 calls of a method that takes 1 MiB made a server hold 298 MiB).
@Suite("A method's maximum request size", .timeLimit(.minutes(2)))
struct MethodRequestLimitTests {
    static func router(started: OneShotSignal = OneShotSignal(), gate: OneShotSignal = OneShotSignal()) -> ServiceRouter {
        var router = ServiceRouter()
        router.register(SmallEcho.self) { request, _ in request }
        router.registerClientStreaming(SmallUpload.self) { chunks, _ in
            var total = 0
            for try await chunk in chunks { total += chunk.utf8.count }
            return total
        }
        // Says it has its request, then answers once the test lets it.
        router.register(GatedEcho.self) { request, _ in
            started.fire()
            await gate.waitUntilFired()
            return request
        }
        // Answers with more than a window at once, reading nothing: its answer waits for credit.
        router.registerClientStreaming(LargeAnswer.self) { _, _ in String(repeating: "r", count: 100_000) }
        return router
    }


    @Test("a request above the method's limit fails with invalidMessage, naming the sizes; one at the limit is served, and the connection goes on")
    func unaryAndStreamedRequests() async throws {
        try await withServiceTestServer(router: Self.router()) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            // 1,022 characters and two quotes: exactly the limit.
            let atLimit = String(repeating: "a", count: SmallEcho.limit - 2)
            #expect(try await connection.call(SmallEcho.self, atLimit) == atLimit)
            let error = await #expect(throws: SocketIPCError.self) {
                try await connection.call(SmallEcho.self, atLimit + "a")
            }
            #expect(error?.code == .invalidMessage)
            #expect(error?.message.contains("a request of 1025 bytes is larger than 'limits.echo' takes (1024 bytes)") == true, "\(String(describing: error))")
            #expect(error?.isRetryable == false)
            // A stream's third message is too large: the call ends, and its handler with it.
            let streamed = await #expect(throws: SocketIPCError.self) {
                try await connection.clientStreaming(SmallUpload.self) { writer in
                    try await writer.write("one")
                    try await writer.write("two")
                    try await writer.write(String(repeating: "b", count: 2_000))
                }
            }
            #expect(streamed?.code == .invalidMessage, "\(String(describing: streamed))")
            // The same connection serves the next call.
            #expect(try await connection.call(SmallEcho.self, "next") == "next")
        }
    }

    @Test("a strict peer blocked on a request above the method's limit gets the call's end with invalidMessage, and no credit")
    func strictPeerRefusedBeforeSending() async throws {
        try await withServiceTestServer(router: Self.router()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // A message of 16 MiB: within the connection's maximum, far above the method's.
            let blocked = StrictCreditTests.blockedBytes(id: 1, cost: UInt32(9 + 16 * 1024 * 1024))
            try await peer.write(serverHelloBytes + callOpenBytes(id: 1, method: SmallEcho.name) + blocked + pingBytes(id: 7))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // The pong (which follows everything read before it) and the end, which the handler's task sends as it
            // ends: no credit frame (0x0a).
            let frames = try await peer.readFrames(2)
            #expect(Set(frames.map(\.kind)) == [0x08, 0x0c], "\(frames)")
            #expect(frames.compactMap(CallEnd.init).first?.status == 0x05)
            // The connection still takes calls.
            try await peer.write(callOpenBytes(id: 3, method: SmallEcho.name) + messageBytes(id: 3, json: "\"x\"") + callEndOKBytes(id: 3))
            var answer: [WireFrame] = []
            while answer.last?.kind != 0x08 { answer += try await peer.readFrames(1) }
            #expect(answer.contains { $0.kind == 0x07 && $0.payload == Array("\"x\"".utf8) }, "\(answer)")
            #expect(answer.last.flatMap(CallEnd.init)?.status == 0x00)
        }
    }

    @Test("a version 1 peer of calls that sends a request above the method's limit gets the call's end with invalidMessage; the connection goes on")
    func version1PeerRefused() async throws {
        try await withServiceTestServer(router: Self.router()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let payload = "\"" + String(repeating: "c", count: 4_000) + "\""
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: SmallEcho.name) + messageBytes(id: 1, json: payload)
                    + pingBytes(id: 7)
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            var frames: [WireFrame] = []
            while !frames.contains(where: { $0.kind == 0x08 }) { frames += try await peer.readFrames(1) }
            let end = frames.compactMap(CallEnd.init).first
            #expect(end?.id == 1 && end?.status == 0x05, "\(frames)")
            #expect(!frames.contains { $0.kind == 0x07 }, "\(frames)")
        }
    }

    @Test("a second request above the limit that comes once the handler has its request is dropped, as any later request: the call answers, and ends with 0x00")
    func lateOversizeRequestDropped() async throws {
        let (started, gate) = (OneShotSignal(), OneShotSignal())
        try await withServiceTestServer(router: Self.router(started: started, gate: gate)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(serverHelloBytes + callOpenBytes(id: 1, method: GatedEcho.name) + messageBytes(id: 1, json: "\"one\""))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            await started.waitUntilFired()
            // Before, it ended the call with 0x05 although the handler had run (a side effect applied, and reported
            // as refused).
            try await peer.write(messageBytes(id: 1, json: "\"" + String(repeating: "x", count: 4_000) + "\""))
            try await peer.write(pingBytes(id: 9))
            #expect(try await peer.readFrames(1).map(\.kind) == [0x0c])
            gate.fire()
            var frames: [WireFrame] = []
            while !frames.contains(where: { $0.kind == 0x08 }) { frames += try await peer.readFrames(1) }
            #expect(frames.contains { $0.kind == 0x07 && $0.payload == Array("\"one\"".utf8) }, "\(frames)")
            #expect(frames.compactMap(CallEnd.init).first?.status == 0x00, "\(frames)")
        }
    }

    @Test("a handler's last message waiting for credit still goes after the caller asks for credit for a request above the limit: the call has ended on the handler's side")
    func parkedAnswerSurvivesLateOversize() async throws {
        try await withServiceTestServer(router: Self.router()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(serverHelloBytes + callOpenBytes(id: 1, method: LargeAnswer.name))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // The handler answers at once: 100,002 bytes (a JSON string), more than the 64 KiB window, so its
            // sender says it is blocked.
            let blocked = try await peer.readFrames(1)
            #expect(blocked.first?.kind == 0x0f, "\(blocked)")
            // Before, this refused the call: the parked answer and its end were dropped, and the caller heard nothing.
            try await peer.write(StrictCreditTests.blockedBytes(id: 1, cost: UInt32(9 + 2 * 1024 * 1024)))
            try await peer.write(creditBytes(id: 1, increment: 200_000))
            var frames: [WireFrame] = []
            while !frames.contains(where: { $0.kind == 0x08 }) { frames += try await peer.readFrames(1) }
            #expect(frames.contains { $0.kind == 0x07 && $0.payload.count == 100_002 }, "\(frames)")
            #expect(frames.compactMap(CallEnd.init).first?.status == 0x00, "\(frames)")
        }
    }
}

/// Says when its handler has its request, and answers when let (``MethodRequestLimitTests``).
enum GatedEcho: ServiceMethod {
    static let name = "limits.gated"
    typealias Request = String
    typealias Response = String
    static var maximumRequestSize: Int? { 1024 }
}

/// Answers 100,000 characters at once.
enum LargeAnswer: ServiceMethod {
    static let name = "limits.largeAnswer"
    typealias Request = String
    typealias Response = String
    static var maximumRequestSize: Int? { 1024 }
}

/// Takes requests of at most 1 KiB.
enum SmallEcho: ServiceMethod {
    static let name = "limits.echo"
    typealias Request = String
    typealias Response = String
    static let limit = 1024
    static var maximumRequestSize: Int? { Self.limit }
}

/// Takes a stream of requests of at most 1 KiB each.
enum SmallUpload: ServiceMethod {
    static let name = "limits.upload"
    typealias Request = String
    typealias Response = Int
    static var maximumRequestSize: Int? { 1024 }
}
