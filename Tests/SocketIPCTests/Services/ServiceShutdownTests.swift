import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

@Suite("Services: a server's graceful shutdown", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceShutdownTests {
    enum Watch: ServiceMethod {
        static let name = "kv.watch"
        typealias Request = String
        typealias Response = String
    }

    /// A watch that yields the current value and then waits, as long as its task is not cancelled: by sleeping
    /// (which throws when cancelled), or (`endsQuietly`) in a `for await` loop, which just ends when cancelled.
    static func router(endsStreams: Bool, endsQuietly: Bool = false) -> ServiceRouter {
        var router = ServiceRouter()
        router.endsResponseStreamsOnShutdown = endsStreams
        router.registerServerStreaming(Watch.self) { key, values, _ in
            try await values.write("\(key)=blue")
            if endsQuietly {
                for await _ in AsyncStream<Int>(unfolding: { try? await Task.sleep(for: .seconds(3600)); return nil }) {}
            } else {
                try await Task.sleep(for: .seconds(3600))
            }
        }
        return router
    }

    @Test("a graceful shutdown ends a watch at once with peerGoingAway, so its caller can go to the next server")
    func endsWatches() async throws {
        let router = Self.router(endsStreams: true)
        try await withServiceTestServer(router: router) { server, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: SocketIPCError.self) {
                try await connection.serverStreaming(Watch.self, "colour") { values in
                    var iterator = values.makeAsyncIterator()
                    #expect(try await iterator.next() == "colour=blue")
                    server.shutdownGracefully()
                    _ = try await iterator.next()
                }
            }
            #expect(error.code == .peerGoingAway)
            #expect(error.isRetryable)
        }
    }

    @Test(
        "with endsResponseStreamsOnShutdown off, a watch runs until the grace period ends, and is not taken for finished",
        arguments: [false, true]
    )
    func keepsWatches(endsQuietly: Bool) async throws {
        let router = Self.router(endsStreams: false, endsQuietly: endsQuietly)
        try await withServiceTestServer(router: router, configure: { $0.shutdownGracePeriod = .milliseconds(200) }) {
            server,
            path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: SocketIPCError.self) {
                try await connection.serverStreaming(Watch.self, "colour") { values in
                    var iterator = values.makeAsyncIterator()
                    #expect(try await iterator.next() == "colour=blue")
                    server.shutdownGracefully()
                    _ = try await iterator.next()
                }
            }
            // Cut by the grace period's end: the handler cancelled (its status may or may not arrive before the close);
            // a handler that returned quietly once cancelled does not end the stream as if it had finished.
            #expect(error.code == .cancelled || error.code == .connectionClosed, "\(error)")
        }
    }

    @Test("100 streams whose writers wait for credit, off the event loops: a graceful shutdown ends every one with unavailable (0x07)")
    func shutdownEndsWaitingWritersAsUnavailable() async throws {
        let streams = 100
        let waiting = AsyncStream<Void>.makeStream()
        var router = ServiceRouter()
        router.runsHandlersOnEventLoop = false
        router.registerServerStreaming(Watch.self) { key, values, _ in
            // A message goes while any of the caller's window of 64 KiB is left: after two of 40,000 bytes none is,
            // and the third waits for credit that never comes.
            try await values.write(String(repeating: "x", count: 40_000))
            try await values.write(String(repeating: "y", count: 40_000))
            waiting.continuation.yield()
            try await values.write(String(repeating: "z", count: 40_000))
        }
        try await withServiceTestServer(router: router) { server, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let ids = (0..<streams).map { UInt32(2 * $0 + 1) }
            try await peer.write(
                callsPeerHelloBytes
                    + ids.flatMap { callOpenBytes(id: $0, method: Watch.name) + messageBytes(id: $0, json: "\"k\"") + callEndOKBytes(id: $0) }
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // Read as it comes (giving no credit), so that the writers wait for credit, not for room in the queue.
            let reader = Task {
                var ends: [CallEnd] = []
                while ends.count < streams {
                    ends += try await peer.readFrames(1).compactMap(CallEnd.init)
                }
                return ends
            }
            var first = 0
            for await _ in waiting.stream {
                first += 1
                if first == streams { break }
            }
            server.shutdownGracefully()
            let ends = try await reader.value
            #expect(ends.allSatisfy { $0.status == 0x07 }, "statuses: \(ends.map(\.status))")
        }
    }

    enum Slow: ServiceMethod {
        static let name = "test.slow"
        typealias Request = Int
        typealias Response = Int
    }

    enum Once: ServiceMethod {
        static let name = "test.once"
        typealias Request = Int
        typealias Response = Int
    }

    @Test("a call opened after the server said going-away is refused with unavailable (0x07) and the code 'refused', and its handler does not run, so that a client may make it again elsewhere")
    func callOpenedAfterGoingAwayIsRefusedUnrun() async throws {
        let started = AsyncStream<Void>.makeStream()
        let release = AsyncStream<Void>.makeStream()
        let runs = Atomic<Int>(0)
        var router = ServiceRouter()
        router.register(Slow.self) { value, _ in
            started.continuation.yield()
            for await _ in release.stream { break }
            return value
        }
        router.register(Once.self) { value, _ in
            runs.add(1, ordering: .relaxed)
            return value
        }
        try await withServiceTestServer(router: router, configure: { $0.shutdownGracePeriod = .seconds(60) }) { server, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(callsPeerHelloBytes + callOpenBytes(id: 1, method: Slow.name) + messageBytes(id: 1, json: "1") + callEndOKBytes(id: 1))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            for await _ in started.stream { break }
            // The slow call keeps the connection open through the grace period.
            server.shutdownGracefully()
            var frames: [WireFrame] = []
            while !frames.contains(where: { $0.kind == 0x05 }) { frames += try await peer.readFrames(1) }
            // A call made in the moment before the going-away reached the caller.
            try await peer.write(callOpenBytes(id: 3, method: Once.name) + messageBytes(id: 3, json: "3") + callEndOKBytes(id: 3))
            var end: WireFrame?
            while end == nil { end = try await peer.readFrames(1).first { CallEnd($0)?.id == 3 } }
            // Status 0x07 with the code "refused": no handler started, so the caller may make it again elsewhere.
            #expect(end.map { Array($0.payload.prefix(9)) } == [0x07, 0x07] + Array("refused".utf8))
            release.continuation.yield()
            // The slow call is answered: its end comes after the refusal, and the handler of the refused one never ran.
            while try await !peer.readFrames(1).compactMap(CallEnd.init).contains(where: { $0.id == 1 }) {}
            #expect(runs.load(ordering: .relaxed) == 0)
        }
    }
}
