import Logging
import NIOCore
import ServiceLifecycle
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

@Suite("Starting and stopping", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ShutdownTests {
    @Test("graceful shutdown lets a request in flight finish, refuses new ones, and removes the socket file")
    func gracefulShutdown() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/graceful.sock"
            let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
            let (heldReplies, heldReplyContinuation) = AsyncStream.makeStream(of: Reply.self)
            var configuration = ServerConfiguration(path: path)
            configuration.shutdownGracePeriod = .seconds(120)
            let server = Server.framed(
                configuration: configuration,
                logger: testLogger,
                onServerRunning: { _ in runningContinuation.yield() },
                makeHandler: { HoldingEchoHandler(held: heldReplyContinuation) }
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.run() }
                for await _ in running { break }
                let connection = try await Client.connect(to: path)
                defer { connection.close() }
                // A request the server holds: once the server has it, shut down while it is in flight.
                // A request that fails ends the wait for the held reply below instead of leaving it hanging.
                let held = Task {
                    do {
                        return try await connection.request(ByteBuffer(string: "hold"))
                    } catch {
                        heldReplyContinuation.finish()
                        throw error
                    }
                }
                var replies = heldReplies.makeAsyncIterator()
                let reply = try #require(await replies.next())
                server.shutdownGracefully()
                #expect(await firstRefusal(on: connection).code == .peerGoingAway)
                reply.succeed(ByteBuffer(string: "held"))
                #expect(String(buffer: try await held.value) == "held")
                try await group.waitForAll()
                let error = await #expect(throws: SocketIPCError.self) { _ = try await connection.request(ByteBuffer(string: "late")) }
                #expect(error?.code == .peerGoingAway || error?.code == .connectionClosed)
            }
            #expect(fileStatus(path) == nil)
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
        }
    }

    @Test("graceful shutdown waits for the reply to a request the server itself has in flight")
    func gracefulShutdownWaitsForOwnRequests() async throws {
        let (serverResults, serverResultContinuation) = AsyncStream.makeStream(of: Result<String, SocketIPCError>.self)
        try await withFramedTestServer(makeHandler: { AskingBackHandler(results: serverResultContinuation) }) {
            server, path in
            let (questions, questionContinuation) = AsyncStream.makeStream(of: Reply.self)
            let connection = try await Client.connect(to: path, handler: HeldRepliesHandler(replies: questionContinuation))
            defer { connection.close() }
            try await connection.send(ByteBuffer(string: "ask me"))
            var heldReplies = questions.makeAsyncIterator()
            let question = try #require(await heldReplies.next())

            server.shutdownGracefully()
            #expect(await firstRefusal(on: connection).code == .peerGoingAway)

            question.succeed(ByteBuffer(string: "the answer"))
            var results = serverResults.makeAsyncIterator()
            let result = try #require(await results.next())
            #expect((try? result.get()) == "the answer", "the server's own request got its reply: \(result)")
            await connection.waitUntilClosed()
        }
    }

    @Test("the grace period ends requests that take too long")
    func gracePeriod() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/grace.sock"
            var configuration = ServerConfiguration(path: path)
            configuration.shutdownGracePeriod = .milliseconds(50)
            try await withRunningServer({
                Server.framed(configuration: configuration, logger: testLogger, onServerRunning: $0) { HangingHandler() }
            }) { server in
                let connection = try await Client.connect(to: path)
                let hanging = Task { try await connection.request(ByteBuffer(string: "never")) }
                _ = try? await connection.request(ByteBuffer(string: "make sure the first one arrived"), timeout: .milliseconds(10))
                server.shutdownGracefully()
                let error = await #expect(throws: SocketIPCError.self) { _ = try await hanging.value }
                #expect(error?.code == .connectionClosed)
            }
            #expect(fileStatus(path) == nil)
        }
    }

    @Test("the grace period bounds the relays of connections that pass descriptors too: a peer that reads none of its replies is cut off when it ends, not after its close timeout")
    func gracePeriodBoundsRelays() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/relay.sock"
            var configuration = ServerConfiguration(path: path)
            configuration.shutdownGracePeriod = .milliseconds(200)
            configuration.connection.maximumDescriptorsPerMessage = 4
            // Before, the relay wrote to the peer for this long after its connection closed, and run() waited.
            configuration.connection.closeTimeout = .seconds(3600)
            let (running, isRunning) = AsyncStream.makeStream(of: Void.self)
            let server = Server.framed(configuration: configuration, logger: testLogger, onServerRunning: { _ in
                isRunning.yield()
            }) { EchoHandler() }
            let serving = Task { try await server.run() }
            defer { serving.cancel() }
            for await _ in running { break }
            // Sixteen requests of 1 MiB whose echoes are never read: the socket takes a few MiB, the relay holds the
            // rest, and the writer waits once the server stops reading.
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            var stream: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00]
            for id in 1...16 {
                stream += frameBytes(kind: 0x02, id: UInt32(id), payload: [UInt8](repeating: 7, count: 1 << 20))
            }
            let writing = Task { try? await socket.send(pieces: [stream]) }
            defer { writing.cancel() }
            // Until the echoes fill the socket (its send buffer is the relay's, up to a few MiB): more than a MiB,
            // unchanged for 200 ms. (Counting only a steady count, a loaded run stopped at the 8 bytes of the hello,
            // before the server had echoed anything.)
            var unread: Int32 = 0
            var steady = 0
            for _ in 0..<6000 where steady < 20 {
                var now: Int32 = 0
                _ = ioctl(socket.descriptor, UInt(FIONREAD), &now)
                steady = now > 1 << 20 && now == unread ? steady + 1 : 0
                unread = now
                try await Task.sleep(for: .milliseconds(10))
            }
            try #require(unread > 1 << 20, "the socket holds \(unread) bytes of echoes")
            server.shutdownGracefully()
            #expect(await outcome(within: .seconds(60)) { try await serving.value } == "returned")
        }
    }

    @Test("as a Service in a ServiceGroup: graceful shutdown of the group stops the server and removes the file")
    func serviceGroup() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/service.sock"
            let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
            let server = Server.framed(
                configuration: .init(path: path),
                logger: testLogger,
                onServerRunning: { _ in runningContinuation.yield() },
                makeHandler: { EchoHandler() }
            )
            let group = ServiceGroup(services: [server], logger: testLogger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                for await _ in running { break }
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "up")) }
                #expect(String(buffer: reply) == "up")
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            #expect(fileStatus(path) == nil)
        }
    }

    @Test("cancelling the task that runs the server closes everything and removes the file")
    func cancellation() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/cancel.sock"
            let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
            let server = Server.eof(
                configuration: .init(path: path),
                logger: testLogger,
                onServerRunning: { _ in runningContinuation.yield() },
                handler: .onEventLoop { _, _ in nil }
            )
            let task = Task { try await server.run() }
            for await _ in running { break }
            #expect(fileStatus(path) != nil)
            task.cancel()
            try await task.value
            #expect(fileStatus(path) == nil)
            #expect(fileStatus(path + ".lock") == nil)
        }
    }
}

/// Answers "ask me" by sending a request back to the client, and reports how that request ended.
private struct AskingBackHandler: ConnectionHandler, Sendable {
    let results: AsyncStream<Result<String, SocketIPCError>>.Continuation

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        guard String(buffer: message) == "ask me" else { return }
        let results = self.results
        Task {
            do {
                results.yield(.success(String(buffer: try await connection.request(ByteBuffer(string: "question")))))
            } catch let error as SocketIPCError {
                results.yield(.failure(error))
            } catch {
                results.yield(.failure(SocketIPCError(.remoteError, "\(error)")))
            }
        }
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

/// Keeps the reply to every request it receives for the test to complete.
private struct HeldRepliesHandler: ConnectionHandler, Sendable {
    let replies: AsyncStream<Reply>.Continuation

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.replies.yield(reply)
    }
}

/// Makes requests until one fails, and returns that error: until the server's going-away frame arrives requests are
/// still served; afterwards they are refused on this side.
private func firstRefusal(on connection: Connection) async -> SocketIPCError {
    while true {
        do {
            _ = try await connection.request(ByteBuffer(string: "still there?"))
        } catch let error as SocketIPCError {
            return error
        } catch {
            return SocketIPCError(.remoteError, "\(error)")
        }
    }
}
