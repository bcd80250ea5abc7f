import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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

    @Test("a resubscribing stream refused with 'unavailable' by a server that keeps the connection open calls again after a backoff on that connection, instead of waiting for ever for another")
    func resubscribesAfterUnavailableOnAnOpenConnection() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/unavailable.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let serving = Task { try await refuseFirstOpenThenAnswerOne(on: listener) }
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            let received = try await withRunningClient(client) {
                // Before the retry, the stream waited for a new connection that never came: the 30 s are a safety
                // net that turns that hang into a failure.
                try await withThrowingTaskGroup(of: [Int]?.self) { group in
                    group.addTask {
                        var values: [Int] = []
                        for try await value in client.resubscribing(CountedWatch.self, 0) { values.append(value) }
                        return values
                    }
                    group.addTask {
                        try await Task.sleep(for: .seconds(30))
                        return nil
                    }
                    let first = try await group.next() ?? nil
                    group.cancelAll()
                    return first
                }
            }
            #expect(received == [1], "the element of the second call")
            let opens = try await serving.value
            #expect(opens.count == 2 && opens[0] != nil && opens[1] != nil && opens[0] != opens[1], "\(opens)")
        }
    }

    @Test(
        "a unary call refused with 'unavailable' and the code 'refused' (no handler started) by a server that keeps the connection open is made again after a backoff on that connection, whatever its method, as gRPC retries a stream refused with REFUSED_STREAM",
        arguments: [true, false]
    )
    func callRetriedAfterUnavailableOnAnOpenConnection(idempotent: Bool) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/unavailable.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let serving = Task { try await refuseFirstOpenThenAnswerOne(on: listener) }
            var configuration = Self.fastRetries
            // Before, an idempotent call waited for a new connection that never came, then failed (a shorter wait for
            // it keeps that failure quick); a non-idempotent one failed at once with peerGoingAway.
            configuration.waitForConnectionTimeout = .seconds(10)
            let client = ServiceClient(path: path, configuration: configuration)
            let value = try await withRunningClient(client) {
                idempotent ? try await client.call(CountedGet.self, 0) : try await client.call(CountedOnce.self, 0)
            }
            #expect(value == 1)
            let opens = try await serving.value
            #expect(opens.count == 2 && opens[0] != nil && opens[1] != nil && opens[0] != opens[1], "\(opens)")
        }
    }

    @Test(
        "a non-idempotent call that ends with 'unavailable' that does not say its handler never started (after its response came, or without the code 'refused') fails with peerGoingAway, and is not made again",
        arguments: [true, false]
    )
    func nonIdempotentCallUnavailableNotRefusedIsNotRetried(afterResponse: Bool) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/unavailable.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let serving = Task { () -> [UInt32?] in
                let peer = try await RawSocket.accepting(on: listener)
                defer { peer.close() }
                _ = try await peer.read(exactly: helloBytes.count)
                try await peer.write(callsPeerHelloBytes)
                let first = try await peer.readCallOpen()
                try await peer.write(
                    afterResponse
                        ? frameBytes(kind: 0x07, id: first ?? 0, payload: Array("1".utf8))
                            + callEndBytes(id: first ?? 0, status: 0x07, code: "refused", text: "going away")
                        : callEndBytes(id: first ?? 0, status: 0x07, text: "going away")
                )
                // Whatever the client sends until it closes: no second open.
                var opens = [first]
                while let next = try await peer.readCallOpen() { opens.append(next) }
                return opens
            }
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            let error = try await withRunningClient(client) {
                await #expect(throws: SocketIPCError.self) { try await client.call(CountedOnce.self, 0) }
            }
            #expect(error?.code == .peerGoingAway)
            let opens = try await serving.value
            #expect(opens.count == 1 && opens[0] != nil, "\(opens)")
        }
    }

    @Test("a unary call of a method its server serves as a stream is refused at once with invalidMessage, its handler never run, and not made again (before the open said that the caller takes one response, the handler ran, and a review found the call made again on the next server when the first went away)")
    func streamServedMethodCalledAsUnaryIsRefused() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stream.sock"
            let runs = Atomic<Int>(0)
            var router = ServiceRouter()
            router.registerServerStreaming(CountedOnce.self) { value, writer, _ in
                runs.add(1, ordering: .relaxed)
                try await writer.write(value)
            }
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            let outcome = try await withServiceServer(at: path, router: router) { _ in
                try await withRunningClient(client) { () -> SocketIPCError? in
                    do {
                        _ = try await client.call(CountedOnce.self, 7)
                        return nil
                    } catch let error as SocketIPCError {
                        return error
                    }
                }
            }
            #expect(outcome?.code == .invalidMessage, "\(String(describing: outcome))")
            #expect(runs.load(ordering: .relaxed) == 0)
        }
    }

    @Test("a resubscribing stream waiting out its backoff after an 'unavailable' ends, without an error, as soon as the client shuts down")
    func shutdownDuringTheBackoff() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/unavailable.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            // The raw server refuses the first open and keeps the connection open (until the test closes it).
            let serving = Task { try await acceptRefusingFirstOpen(on: listener).peer }
            var configuration = ServiceClientConfiguration()
            // A backoff that outlasts the test: only the shutdown can end the wait.
            configuration.backoff = ConnectionBackoff(initialDelay: .seconds(3600), maximumDelay: .seconds(3600))
            let client = ServiceClient(path: path, configuration: configuration)
            let ended = try await withRunningClient(client) {
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        // An error would fail the test: the stream ends quietly.
                        for try await _ in client.resubscribing(CountedWatch.self, 0) {}
                        return true
                    }
                    // The stream is refused once, then waits out its backoff.
                    let peer = try await serving.value
                    defer { peer.close() }
                    client.shutdown()
                    group.addTask {
                        try await Task.sleep(for: .seconds(30))  // a safety net, not a synchronisation
                        return false
                    }
                    let first = try await group.next() ?? false
                    group.cancelAll()
                    return first
                }
            }
            #expect(ended, "the stream ended once the client shut down")
        }
    }

    @Test("a resubscribing stream whose call's window holds many elements hands out none after shutdown() and ends (found by a review: a slow consumer got 245 in 5 s after it)")
    func shutdownEndsABufferedStream() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/buffered.sock"
            var router = ServiceRouter()
            let written = Atomic<Int>(0)
            // As many small elements as the window takes, at once.
            router.registerServerStreaming(CountedWatch.self) { first, writer, _ in
                for value in first..<(first + 100_000) {
                    try await writer.write(value)
                    written.add(1, ordering: .relaxed)
                }
            }
            try await self.withServiceServer(at: path, router: router) { _ in
                let client = ServiceClient(path: path, configuration: Self.fastRetries)
                let afterShutdown = try await self.withRunningClient(client) {
                    var iterator = client.resubscribing(CountedWatch.self, 0).makeAsyncIterator()
                    #expect(try await iterator.next() == 0)
                    // The window fills while the consumer dawdles: the server has sent far more than one element
                    // ahead (a window of 64 KiB holds thousands of these).
                    #expect(await eventually { written.load(ordering: .relaxed) >= 1_000 })
                    client.shutdown()
                    var count = 0
                    while try await iterator.next() != nil { count += 1 }
                    return count
                }
                // At most the one element the stream had handed on before the shutdown.
                #expect(afterShutdown <= 1, "\(afterShutdown) elements after shutdown()")
            }
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
            // Long enough for the first attempt to fail first on a loaded machine (with 300 ms, a loaded CI run's call
            // timed out before any attempt had failed, and failed with timedOut).
            configuration.waitForConnectionTimeout = .seconds(2)
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

/// The raw server's side of one connection accepted on `listener`: the hellos, then its first call open answered
/// with status unavailable (0x07); the connection stays open. Returns it and the refused call's id.
private func acceptRefusingFirstOpen(on listener: Int32, refused: Bool = true) async throws -> (peer: RawSocket, first: UInt32?) {
    let peer = try await RawSocket.accepting(on: listener)
    _ = try await peer.read(exactly: helloBytes.count)
    try await peer.write(callsPeerHelloBytes)
    let first = try await peer.readCallOpen()
    try await peer.write(callEndBytes(id: first ?? 0, status: 0x07, code: refused ? "refused" : "", text: "not now"))
    return (peer, first)
}

/// A raw server on `listener` whose first call open is answered "unavailable" (0x07), the connection kept open, and
/// whose second gets the message `1` and the end; returns the two opens' ids.
private func refuseFirstOpenThenAnswerOne(on listener: Int32, refused: Bool = true) async throws -> [UInt32?] {
    let (peer, first) = try await acceptRefusingFirstOpen(on: listener, refused: refused)
    defer { peer.close() }
    let second = try await peer.readCallOpen()
    try await peer.write(frameBytes(kind: 0x07, id: second ?? 0, payload: Array("1".utf8)) + callEndOKBytes(id: second ?? 0))
    _ = try await peer.readAvailable(for: .milliseconds(1))
    return [first, second]
}

/// An idempotent unary method of `Int`s, for a raw server that answers it by hand.
private enum CountedGet: ServiceMethod {
    static let name = "counted.get"
    static let isIdempotent = true
    typealias Request = Int
    typealias Response = Int
}

/// A unary method of `Int`s that is not idempotent, for a raw server that answers it by hand.
private enum CountedOnce: ServiceMethod {
    static let name = "counted.once"
    typealias Request = Int
    typealias Response = Int
}

/// A server-streaming method of `Int`s, for a raw server that answers it by hand.
private enum CountedWatch: ServiceMethod {
    static let name = "counted.watch"
    typealias Request = Int
    typealias Response = Int
}
