import SocketIPCTesting
import Testing

/// SocketIPCTesting as a user's test target sees it: nothing is imported but the product and Swift Testing.
@Suite("SocketIPCTesting's test servers", .timeLimit(.minutes(1)))
struct TestServerTests {
    @Test("a framed test server answers while the body runs; afterwards its directory is gone")
    func framed() async throws {
        let path = try await withFramedTestServer(makeHandler: { AsyncRequestHandler { request, _ in request } }) {
            server, path in
            #expect(server.configuration.path == path)
            #expect(path.utf8.count <= SocketPath.maximumLength)
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "ping")) }
            #expect(String(buffer: reply) == "ping")
            return path
        }
        await expectDirectoryRemoved(of: path)
    }

    @Test("a service test server serves its router's methods")
    func service() async throws {
        enum Get: ServiceMethod {
            static let name = "kv.get"
            typealias Request = String
            typealias Response = String?
        }
        var router = ServiceRouter()
        router.register(Get.self) { key, _ in key == "colour" ? "blue" : nil }
        let path = try await withServiceTestServer(router: router) { _, path in
            let value = try await Client.withConnection(to: path) { try await $0.call(Get.self, "colour") }
            #expect(value == "blue")
            return path
        }
        await expectDirectoryRemoved(of: path)
    }

    @Test("an EOF-style test server acknowledges; configure and socketName apply")
    func eof() async throws {
        let handler = EOFMessageHandler.onEventLoop { message, _ in ByteBuffer(string: "got \(message.readableBytes)") }
        try await withEOFTestServer(
            handler: handler,
            socketName: "inbox.sock",
            configure: { $0.mode = 0o660 }
        ) { server, path in
            #expect(path.hasSuffix("/inbox.sock"))
            #expect(server.configuration.mode == 0o660)
            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
            #expect(String(buffer: acknowledgement) == "got 5")
        }
    }

    @Test("when the body throws, the error comes through and the server and its directory are gone all the same")
    func bodyThrows() async throws {
        struct Failure: Error {}
        var socketPath: String?
        await #expect(throws: Failure.self) {
            try await withFramedTestServer(makeHandler: { AsyncRequestHandler { request, _ in request } }) { _, path in
                socketPath = path
                throw Failure()
            }
        }
        await expectDirectoryRemoved(of: try #require(socketPath))
    }

    @Test("a server that cannot start throws its error instead of hanging the test")
    func serverCannotStart() async throws {
        let error = await #expect(throws: SocketIPCError.self) {
            try await withFramedTestServer(
                socketName: "missing/test.sock",
                makeHandler: { AsyncRequestHandler { request, _ in request } }
            ) { _, _ in
                Issue.record("the body ran although the server never started")
            }
        }
        #expect(error?.code == .parentDirectoryMissing)
    }

    @Test("withRunningServer runs a server on a path of the test's own and removes its socket file on return")
    func runningServerAtPath() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/own.sock"
            let server = try await withRunningServer({
                Server.framed(configuration: .init(path: path), logger: quietLogger, onServerRunning: $0) {
                    AsyncRequestHandler { request, _ in request }
                }
            }) { server in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "hi")) }
                #expect(String(buffer: reply) == "hi")
                return server
            }
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.probe(path) }
            #expect(error?.code == .connectionRefused, "the server stopped and removed its socket file")
            let again = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(again?.code == .invalidState, "run() has returned: the server cannot be run again")
        }
    }
}

/// Expects that the temporary directory `path` was in is gone: a server there cannot find its parent directory.
private func expectDirectoryRemoved(of path: String) async {
    let server = Server.framed(configuration: .init(path: path), logger: quietLogger) {
        AsyncRequestHandler { request, _ in request }
    }
    let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
    #expect(error?.code == .parentDirectoryMissing, "the temporary directory was removed")
}

/// A logger for the servers these tests make themselves, so that a passing run prints nothing.
private let quietLogger: Logger = {
    var logger = Logger(label: "socketipc.testing.tests")
    logger.logLevel = .critical
    return logger
}()
