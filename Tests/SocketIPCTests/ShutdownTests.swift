import Logging
import NIOCore
import ServiceLifecycle
import SocketIPC
import Synchronization
import Testing

@Suite("Starting and stopping")
struct ShutdownTests {
    @Test("graceful shutdown lets a request in flight finish, refuses new ones, and removes the socket file")
    func gracefulShutdown() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/graceful.sock"
            let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
            let server = Server.framed(
                configuration: .init(path: path),
                logger: testLogger,
                onServerRunning: { _ in runningContinuation.yield() },
                makeHandler: { EchoHandler() }
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.run() }
                for await _ in running { break }
                let connection = try await Client.connect(to: path)
                defer { connection.close() }
                // Ask for a slow reply, make sure it reached the server, then shut down while it is in flight.
                let slow = Task { try await connection.request(ByteBuffer(string: "slow:300")) }
                let echoed = try await connection.request(ByteBuffer(string: "ordered after the slow one"))
                #expect(String(buffer: echoed) == "ordered after the slow one")
                server.shutdownGracefully()
                #expect(String(buffer: try await slow.value) == "slow:300")
                try await group.waitForAll()
                let error = await #expect(throws: SocketIPCError.self) { _ = try await connection.request(ByteBuffer(string: "late")) }
                #expect(error?.code == .peerGoingAway || error?.code == .connectionClosed)
            }
            #expect(fileIdentity(path) == nil)
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
        }
    }

    @Test("the grace period ends requests that take too long")
    func gracePeriod() async throws {
        try await withTemporaryDirectory { directory in
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
            #expect(fileIdentity(path) == nil)
        }
    }

    @Test("as a Service in a ServiceGroup: graceful shutdown of the group stops the server and removes the file")
    func serviceGroup() async throws {
        try await withTemporaryDirectory { directory in
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
            #expect(fileIdentity(path) == nil)
        }
    }

    @Test("cancelling the task that runs the server closes everything and removes the file")
    func cancellation() async throws {
        try await withTemporaryDirectory { directory in
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
            #expect(fileIdentity(path) != nil)
            task.cancel()
            try await task.value
            #expect(fileIdentity(path) == nil)
            #expect(fileIdentity(path + ".lock") == nil)
        }
    }
}
