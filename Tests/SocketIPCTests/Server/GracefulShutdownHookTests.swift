import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Server.onGracefulShutdown", .timeLimit(.minutes(5)), .limitedConcurrency)
struct GracefulShutdownHookTests {
    @Test("what the bodies send reaches each client before the going-away; they run once, in registration order")
    func bodiesRunBeforeTheGoingAway() async throws {
        let ran = Recorder()
        try await withFramedTestServer(configure: { $0.handshakeTimeout = .seconds(120); $0.shutdownGracePeriod = .seconds(120) }, makeHandler: { EchoHandler() }) { server, path in
            var sockets: [RawSocket] = []
            for _ in 0..<2 { sockets.append(try await connectEstablishedRawSocket(to: path)) }
            defer { for socket in sockets { socket.close() } }
            server.onGracefulShutdown {
                ran.items.withLock { $0.append("first") }
                #expect(await server.broadcast(ByteBuffer(string: "going down")) == 2)
            }
            server.onGracefulShutdown {
                ran.items.withLock { $0.append("second") }
                for connection in server.connections { try? await connection.send(ByteBuffer(string: "bye")) }
            }
            server.shutdownGracefully()
            server.shutdownGracefully()  // a second request runs nothing again
            for socket in sockets {
                let frames = RawFrame.parse(try await socket.readUntilClosed())
                try #require(frames.count == 3, "\(frames)")
                #expect(frames[0] == .message("going down"))
                #expect(frames[1] == .message("bye"))
                #expect(frames[2].kind == 0x05, "then the going-away: \(frames[2])")
                #expect(frames[2].body.first == 0x00, "reason normal")
            }
        }
        #expect(ran.items.withLock { $0 } == ["first", "second"])
    }

    @Test("run() returns only once the bodies have ended, also with no connection to drain")
    func runWaitsForTheBodies() async throws {
        let events = Recorder()
        let (started, startedContinuation) = AsyncStream.makeStream(of: Void.self)
        let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
        try await withTemporarySocketDirectory { directory in
            let server = Server.framed(configuration: .init(path: directory + "/drain.sock"), logger: testLogger) {
                EchoHandler()
            }
            server.onGracefulShutdown {
                startedContinuation.yield()
                for await _ in release { break }
                events.items.withLock { $0.append("body ended") }
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await server.run()
                    events.items.withLock { $0.append("run() returned") }
                }
                try await server.waitUntilRunning()
                server.shutdownGracefully()
                for await _ in started { break }
                releaseContinuation.yield()
                try await group.waitForAll()
            }
        }
        #expect(events.items.withLock { $0 } == ["body ended", "run() returned"])
    }

    @Test("a body registered once the shutdown has begun runs at once")
    func lateBodiesRunAtOnce() async throws {
        let (late, lateContinuation) = AsyncStream.makeStream(of: String.self)
        var lateBodies = late.makeAsyncIterator()
        let server = try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            let client = try await RecordingClient.connect(to: path)
            defer { client.connection.close() }
            server.shutdownGracefully()
            server.onGracefulShutdown { lateContinuation.yield("while shutting down") }
            #expect(await lateBodies.next() == "while shutting down")
            return server
        }
        server.onGracefulShutdown { lateContinuation.yield("after it stopped") }
        #expect(await lateBodies.next() == "after it stopped")
    }

    @Test("while the bodies run, the connections are served as before; the going-away comes after the bodies")
    func connectionsAreServedWhileTheBodiesRun() async throws {
        let (started, startedContinuation) = AsyncStream.makeStream(of: Void.self)
        let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
        try await withFramedTestServer(configure: { $0.handshakeTimeout = .seconds(120); $0.shutdownGracePeriod = .seconds(120) }, makeHandler: { EchoHandler() }) { server, path in
            let early = try await connectEstablishedRawSocket(to: path)
            defer { early.close() }
            server.onGracefulShutdown {
                startedContinuation.yield()
                for await _ in release { break }
                _ = await server.broadcast(ByteBuffer(string: "last words"))
            }
            server.shutdownGracefully()
            for await _ in started { break }
            try await early.write(frameBytes(kind: 0x02, id: 2, payload: Array("still served".utf8)))
            let reply = RawFrame.parse(try await early.read(exactly: 4 + 1 + 4 + 12))
            #expect(reply == [RawFrame(kind: 0x03, body: [0, 0, 0, 2] + Array("still served".utf8))])
            releaseContinuation.yield()
            let frames = RawFrame.parse(try await early.readUntilClosed())
            #expect(frames.map(\.kind) == [0x01, 0x05], "\(frames)")
        }
    }

    @Test("a forced shutdown (run()'s task cancelled) runs the bodies too, cancelled")
    func forcedShutdownRunsTheBodiesCancelled() async throws {
        let ran = Mutex<[Bool]>([])
        try await withTemporarySocketDirectory { directory in
            let server = Server.framed(configuration: .init(path: directory + "/forced.sock"), logger: testLogger) {
                EchoHandler()
            }
            server.onGracefulShutdown { ran.withLock { $0.append(Task.isCancelled) } }
            let running = Task { try await server.run() }
            try await server.waitUntilRunning()
            running.cancel()
            try await running.value
        }
        #expect(ran.withLock { $0 } == [true])
    }
}
