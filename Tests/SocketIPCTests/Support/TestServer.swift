import Logging
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization

// Servers for the tests come from SocketIPCTesting (withFramedTestServer, withEOFTestServer, withRunningServer); what
// is here is what only these tests need.

/// An ``EchoHandler`` server on `path` (configured by `configure`) for the length of `body`, for tests that choose the
/// path or look at its directory after the server has stopped; SocketIPCTesting's `withRunningServer` starts and
/// stops it, and throws the error of a server that cannot start.
func withEchoServer<Result>(
    path: String,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    _ body: (Server) async throws -> Result
) async throws -> Result {
    try await withFramedServer(path: path, configure: configure, makeHandler: { EchoHandler() }, body)
}

/// Runs a framed server at `path` (a directory the test made) whose connections get handlers from `makeHandler`,
/// for tests that choose the path; ``withFramedTestServer`` makes the directory itself.
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

/// The logger of the servers the tests make themselves: critical messages only, like SocketIPCTesting's default.
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

/// Never answers requests; closes the connection when it gets the message `close`.
struct HangingHandler: ConnectionHandler {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {}
    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        if String(buffer: message) == "close" { connection.close() }
    }
}

/// Strings collected from any thread.
final class Recorder: Sendable {
    let items = Mutex<[String]>([])
}
