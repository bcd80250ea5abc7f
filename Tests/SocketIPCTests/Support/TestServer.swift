import Logging
import NIOCore
import SocketIPC

/// Runs `server` in a child task, waits until it accepts connections, runs `body`, then shuts the server down
/// gracefully and waits for it to finish.
func withRunningServer<Result>(
    _ makeServer: (_ onRunning: @escaping @Sendable (SocketPath) async -> Void) -> Server,
    _ body: (Server) async throws -> Result
) async throws -> Result {
    let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
    let server = makeServer { _ in runningContinuation.yield() }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        var iterator = running.makeAsyncIterator()
        _ = await iterator.next()
        do {
            let result = try await body(server)
            server.shutdownGracefully()
            try await group.waitForAll()
            return result
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

/// A framed server on `path` whose connections get handlers from `makeHandler`.
func withFramedServer<Handler: ConnectionHandler & SendableMetatype, Result>(
    path: String,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    makeHandler: @escaping @Sendable () -> Handler,
    _ body: (Server) async throws -> Result
) async throws -> Result {
    var configuration = ServerConfiguration(path: path)
    configure(&configuration)
    return try await withRunningServer(
        { Server.framed(configuration: configuration, logger: testLogger, onServerRunning: $0, makeHandler: makeHandler) },
        body
    )
}

/// An echo handler: requests are answered with their payload; `fail` requests with an error; `slow:N` after N ms.
struct EchoHandler: ConnectionHandler, Sendable {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        // Only short requests can be commands; decoding a 16 MiB payload as text would take seconds.
        let text = request.readableBytes <= 32 ? String(buffer: request) : ""
        if text == "fail" {
            reply.fail(SocketIPCError(.remoteError, "you asked me to fail"))
        } else if text.hasPrefix("slow:"), let millis = Int(text.dropFirst(5)) {
            reply.complete {
                try await Task.sleep(for: .milliseconds(millis))
                return request
            }
        } else {
            reply.succeed(request)
        }
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "socketipc.tests")
    logger.logLevel = .critical
    return logger
}()

/// Echoes requests, except `hold`, whose reply it hands to the test (through `held`) to complete when it wants.
struct HoldingEchoHandler: ConnectionHandler, Sendable {
    let held: AsyncStream<Reply>.Continuation

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        if request.readableBytes == 4, String(buffer: request) == "hold" {
            self.held.yield(reply)
        } else {
            reply.succeed(request)
        }
    }
}
