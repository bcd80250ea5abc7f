import Logging
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

/// What a handler under test went through.
private enum HandlerEvent: Equatable, Sendable {
    case started
    case cancelled
    case finished(cancelled: Bool)
    /// The server refused a connection for want of room (`resourceExhausted`).
    case refused
}

/// Handler work runs in child tasks that the connection's close and the server's shutdown reach as cancellation.
@Suite("Handler tasks", .timeLimit(.minutes(5)), .limitedConcurrency)
struct HandlerTaskTests {
    /// An async handler that says when it starts, then sleeps for as long as it is not cancelled.
    private static func sleepingHandler(_ events: AsyncStream<HandlerEvent>.Continuation) -> AsyncRequestHandler {
        AsyncRequestHandler { request, _ in
            events.yield(.started)
            do {
                try await Task.sleep(for: .seconds(600))
            } catch {
                events.yield(.cancelled)
                throw error
            }
            events.yield(.finished(cancelled: false))
            return request
        }
    }

    /// An EOF-style server whose collecting handler says when it starts, then sleeps for as long as it is not
    /// cancelled, and acknowledges with the message.
    private static func sleepingEOFServer(
        _ configuration: ServerConfiguration,
        _ events: AsyncStream<HandlerEvent>.Continuation,
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void
    ) -> Server {
        Server.eof(
            configuration: configuration,
            logger: testLogger,
            onServerRunning: onServerRunning,
            handler: .collecting { message, _ in
                events.yield(.started)
                do {
                    try await Task.sleep(for: .seconds(600))
                } catch {
                    events.yield(.cancelled)
                    throw error
                }
                return message
            }
        )
    }

    @Test("a request handler's task is cancelled when its client disconnects")
    func cancelledWhenClientDisconnects() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/disconnect.sock"
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            try await withFramedServer(path: path, makeHandler: { Self.sleepingHandler(event) }) { _ in
                let connection = try await Client.connect(to: path)
                let request = Task { try await connection.request(ByteBuffer(string: "sleep")) }
                var iterator = events.makeAsyncIterator()
                #expect(await iterator.next() == .started)
                connection.abort()
                #expect(await iterator.next() == .cancelled)
                await #expect(throws: SocketIPCError.self) { _ = try await request.value }
            }
        }
    }

    @Test("a request handler still running when the grace period ends is cancelled, and run() returns")
    func cancelledWhenGracePeriodEnds() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/grace.sock"
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            var iterator = events.makeAsyncIterator()
            try await withFramedServer(
                path: path,
                configure: { $0.shutdownGracePeriod = .milliseconds(100) },
                makeHandler: { Self.sleepingHandler(event) }
            ) { server in
                let connection = try await Client.connect(to: path)
                let request = Task { try await connection.request(ByteBuffer(string: "sleep")) }
                #expect(await iterator.next() == .started)
                server.shutdownGracefully()
                let error = await #expect(throws: SocketIPCError.self) { _ = try await request.value }
                // A handler that fails because it was cancelled sends no error reply: the close is what the client sees.
                #expect(error?.code == .connectionClosed, "\(String(describing: error))")
            }
            // run() has returned (withFramedServer waited for it): the handler's task had ended by then.
            event.finish()
            #expect(await iterator.next() == .cancelled)
            #expect(await iterator.next() == nil)
        }
    }

    @Test("a graceful shutdown lets an async handler finish within the grace period, uncancelled")
    func gracefulShutdownLetsHandlerFinish() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/finish.sock"
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
            let handler = AsyncRequestHandler { request, _ in
                guard String(buffer: request) == "wait" else { return request }
                event.yield(.started)
                for await _ in release { break }
                event.yield(.finished(cancelled: Task.isCancelled))
                return request
            }
            var iterator = events.makeAsyncIterator()
            try await withFramedServer(path: path, makeHandler: { handler }) { server in
                let connection = try await Client.connect(to: path)
                let request = Task { try await connection.request(ByteBuffer(string: "wait")) }
                #expect(await iterator.next() == .started)
                server.shutdownGracefully()
                // The client learns that the server is going away: new requests are refused.
                var refusal: SocketIPCError?
                while refusal == nil {
                    do {
                        _ = try await connection.request(ByteBuffer(string: "ping"))
                    } catch {
                        refusal = error as? SocketIPCError
                    }
                }
                #expect(refusal?.code == .peerGoingAway)
                releaseContinuation.yield()
                #expect(String(buffer: try await request.value) == "wait")
            }
            #expect(await iterator.next() == .finished(cancelled: false))
        }
    }

    @Test("an EOF-style collecting handler still running when the grace period ends is cancelled, and run() returns")
    func eofHandlerCancelledWhenGracePeriodEnds() async throws {
        var iterator = try await Self.withSleepingEOFServer("eof.sock") { server, path, iterator in
            let send = Task { try await Client.sendMessage(ByteBuffer(string: "sleep"), to: path) }
            #expect(await iterator.next() == .started)
            server.shutdownGracefully()
            // No acknowledgement: the connection closes without one.
            #expect((try? await send.value)?.readableBytes ?? 0 == 0)
        }
        #expect(await iterator.next() == .cancelled)
    }

    /// Runs ``sleepingEOFServer(_:_:onServerRunning:)`` at `name` in a fresh directory with a 100 ms grace period
    /// (and what `configure` sets) for `body`, which gets the server, its path and its handlers' events; returns
    /// those events once `run()` has returned.
    private static func withSleepingEOFServer(
        _ name: String,
        configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (Server, String, inout AsyncStream<HandlerEvent>.AsyncIterator) async throws -> Void
    ) async throws -> AsyncStream<HandlerEvent>.AsyncIterator {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/" + name
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            var iterator = events.makeAsyncIterator()
            var configuration = ServerConfiguration(path: path)
            configuration.shutdownGracePeriod = .milliseconds(100)
            configure(&configuration)
            try await withRunningServer({
                Self.sleepingEOFServer(configuration, event, onServerRunning: $0)
            }) { server in
                try await body(server, path, &iterator)
            }
            event.finish()
            return iterator
        }
    }

    @Test("a client's handler task (answering the server's request) is cancelled when the client closes")
    func clientHandlerCancelledOnClose() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/client.sock"
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            // The server answers each request with the client's answer to the same question.
            let asksBack = AsyncRequestHandler { request, connection in try await connection.request(request) }
            try await withFramedServer(path: path, makeHandler: { asksBack }) { _ in
                let connection = try await Client.connect(to: path, handler: Self.sleepingHandler(event))
                let request = Task { try await connection.request(ByteBuffer(string: "question")) }
                var iterator = events.makeAsyncIterator()
                #expect(await iterator.next() == .started)
                connection.abort()
                #expect(await iterator.next() == .cancelled)
                await #expect(throws: SocketIPCError.self) { _ = try await request.value }
            }
        }
    }

    @Test("an EOF-style collecting handler finishes when its client closes right after its half-close (as socat does)")
    func eofHandlerFinishesAfterClientCloses() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/socat.sock"
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            var iterator = events.makeAsyncIterator()
            // The message must end within the server's time limit from the accept: a loaded machine took longer
            // than the default 10 s, and the handler never started. This test is about the handler's task.
            var configuration = ServerConfiguration(path: path)
            configuration.handshakeTimeout = .seconds(120)
            try await withRunningServer({
                Server.eof(
                    configuration: configuration,
                    logger: testLogger,
                    onServerRunning: $0,
                    handler: .collecting { _, _ in
                        event.yield(.started)
                        // Long enough for the client's close to reach the server first; a cancelled handler ends at
                        // once.
                        do {
                            try await Task.sleep(for: .seconds(1))
                        } catch {
                            event.yield(.cancelled)
                            throw error
                        }
                        event.yield(.finished(cancelled: Task.isCancelled))
                        return nil
                    }
                )
            }) { _ in
                let socket = try await RawSocket.connect(to: path)
                try await socket.write(Array("hi".utf8))
                socket.shutdownWrite()
                #expect(await iterator.next() == .started)
                socket.close()
                #expect(await iterator.next() == .finished(cancelled: false))
            }
        }
    }

    @Test("an EOF-style handler whose client closed keeps the connection's place: with room for one, the next client is refused")
    func eofHandlerKeepsItsPlaceAfterItsClientCloses() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/place.sock"
            // One stream for the handlers' starts and the server's refusals, so that what comes after another client
            // connects says which happened: refused (the place is still taken), or served (a handler starts).
            let (events, event) = AsyncStream.makeStream(of: HandlerEvent.self)
            var iterator = events.makeAsyncIterator()
            var configuration = ServerConfiguration(path: path)
            configuration.shutdownGracePeriod = .milliseconds(100)
            configuration.maximumConnections = 1
            configuration.handshakeTimeout = .seconds(120)
            configuration.onConnectionRefused = { _, error in
                if error.code == .resourceExhausted { event.yield(.refused) }
            }
            try await withRunningServer({
                Self.sleepingEOFServer(configuration, event, onServerRunning: $0)
            }) { server in
                let first = try await RawSocket.connect(to: path)
                try await first.write(Array("hi".utf8))
                first.shutdownWrite()
                #expect(await iterator.next() == .started)
                first.close()
                // The first client is gone; its handler still runs (until the shutdown's grace period ends it). Other
                // clients, each with its message whole, one after another: every one is refused, however soon the
                // server sees the first client's close (nothing here can tell when it does; within a few attempts it
                // has, and a server that freed the place then would start a second handler).
                for attempt in 1...50 {
                    let other = try await RawSocket.connect(to: path)
                    try? await other.write(Array("me too".utf8))
                    other.shutdownWrite()
                    let outcome = await iterator.next()
                    other.close()
                    #expect(outcome == .refused, "attempt \(attempt)")
                    if outcome != .refused { break }
                }
                server.shutdownGracefully()
            }
            event.finish()
        }
    }

    @Test("the grace period still ends an EOF-style handler whose client closed: run() returns, the handler is cancelled")
    func gracePeriodEndsHandlerWithoutConnection() async throws {
        var iterator = try await Self.withSleepingEOFServer(
            "drained.sock",
            configure: { $0.handshakeTimeout = .seconds(120) }
        ) { server, path, iterator in
            // The message whole, then the client goes (as socat does): no connection is left, only the handler at
            // work, which holds the connection's place until it ends.
            let socket = try await RawSocket.connect(to: path)
            try await socket.write(Array("hi".utf8))
            socket.shutdownWrite()
            #expect(await iterator.next() == .started)
            socket.close()
            server.shutdownGracefully()
        }
        // withSleepingEOFServer returned, so run() did: the grace period's end cancelled the handler.
        #expect(await iterator.next() == .cancelled)
    }
}
