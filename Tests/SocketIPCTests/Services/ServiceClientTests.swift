import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Services: a client that survives restarts", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceClientTests {
    /// A service server at `path` for the length of `body`.
    func withServiceServer<Result>(
        at path: String,
        router: ServiceRouter = keyValueRouter(),
        configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (Server) async throws -> Result
    ) async throws -> Result {
        try await withFramedServer(
            path: path,
            configure: configure,
            makeHandler: { ServiceConnectionHandler(router: router) },
            body
        )
    }

    /// Runs `client` for the length of `body`, then shuts it down and waits for `run()` to return.
    func withRunningClient<Result>(
        _ client: ServiceClient,
        _ body: () async throws -> Result
    ) async throws -> Result {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { client.shutdown() }
            let result = try await body()
            client.shutdown()
            try await group.waitForAll()
            return result
        }
    }

    static var fastRetries: ServiceClientConfiguration {
        var configuration = ServiceClientConfiguration()
        configuration.backoff = ConnectionBackoff(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(100))
        return configuration
    }

    @Test("a client started before its server waits, retrying with backoff, and its first call goes through once the server is up")
    func startsFirst() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            try await withRunningClient(client) {
                var states = client.states.makeAsyncIterator()
                // It tries, fails (no server) and waits to retry.
                var sawRetry = false
                while let state = await states.next() {
                    if case .waitingToRetry(_, _, let error) = state {
                        #expect(error.code == .connectionRefused)
                        sawRetry = true
                        break
                    }
                }
                #expect(sawRetry)
                let call = Task { try await client.call(Get.self, "colour") }
                try await withServiceServer(at: path) { _ in
                    let value = try await call.value
                    #expect(value == nil)
                    while let state = await states.next(), state != .ready {}
                    #expect(client.state == .ready)
                }
            }
            #expect(client.state == .shutDown)
        }
    }

    @Test("across a server restart: onConnect runs again, idempotent calls go on, a resubscribing stream continues on the new server")
    func restart() async throws {
        enum Watch: ServiceMethod {
            static let name = "kv.watch"
            typealias Request = String
            typealias Response = String
        }
        func router(generation: String) -> ServiceRouter {
            var router = keyValueRouter()
            router.registerServerStreaming(Watch.self) { key, writer, _ in
                // The current value first, then nothing until the server goes.
                try await writer.write("\(key)@\(generation)")
                try await Task.sleep(for: .seconds(3600))
            }
            return router
        }
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let connects = Atomic<Int>(0)
            let client = ServiceClient(path: path, configuration: Self.fastRetries) { _ in
                connects.add(1, ordering: .relaxed)
            }
            try await withRunningClient(client) {
                let watch = client.resubscribing(Watch.self, "colour")
                var changes = watch.makeAsyncIterator()
                let shortGrace: (inout ServerConfiguration) -> Void = { $0.shutdownGracePeriod = .seconds(10) }
                try await withServiceServer(at: path, router: router(generation: "first"), configure: shortGrace) { _ in
                    let first = try await changes.next()
                    #expect(first == "colour@first")
                    let value = try await client.call(Get.self, "x")
                    #expect(value == nil)
                }
                // The server is gone (its grace period cut the watch short); the next one takes its place.
                try await withServiceServer(at: path, router: router(generation: "second"), configure: shortGrace) { _ in
                    let second = try await changes.next()
                    #expect(second == "colour@second")
                    // The first server said why it went.
                    #expect(client.lastCloseReason?.code == .peerGoingAway, "\(String(describing: client.lastCloseReason))")
                    let value = try await client.call(Get.self, "x")
                    #expect(value == nil)
                }
            }
            #expect(connects.load(ordering: .relaxed) == 2)
        }
    }

    @Test("a client its server refuses fails for good: run() throws unauthorized, calls fail with it")
    func refused() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let refuseEveryone: (inout ServerConfiguration) -> Void = {
                $0.authorization = AuthorizationPolicy("nobody") { _ in false }
            }
            try await withServiceServer(at: path, configure: refuseEveryone) { _ in
                let client = ServiceClient(path: path, configuration: Self.fastRetries)
                let error = try await #require(throws: SocketIPCError.self) { try await client.run() }
                #expect(error.code == .unauthorized)
                guard case .failed(let failure) = client.state else {
                    Issue.record("the state is \(client.state)")
                    return
                }
                #expect(failure.code == .unauthorized)
                let callError = try await #require(throws: SocketIPCError.self) { try await client.call(Get.self, "x") }
                #expect(callError.code == .unauthorized)
            }
        }
    }

    @Test("a call finds no connection within its bounded wait and fails with the last connection error")
    func boundedWait() async throws {
        try await withTemporarySocketDirectory { directory in
            var configuration = Self.fastRetries
            configuration.waitForConnectionTimeout = .milliseconds(300)
            let client = ServiceClient(path: directory + "/none.sock", configuration: configuration)
            try await withRunningClient(client) {
                let error = try await #require(throws: SocketIPCError.self) { try await client.call(Get.self, "x") }
                #expect(error.code == .connectionRefused)
            }
            let afterShutdown = try await #require(throws: SocketIPCError.self) { try await client.call(Get.self, "x") }
            #expect(afterShutdown.code == .invalidState)
        }
    }
}
