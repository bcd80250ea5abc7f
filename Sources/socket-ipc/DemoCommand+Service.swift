import Logging
import SocketIPC

// The demo's last part: a typed service with a stream, and a ServiceClient that rides out a restart of its server.
extension DemoCommand {
    /// How long the demo's service servers let calls finish when they shut down. The counter's watch never finishes,
    /// so a restart cuts it off after this, and the client's resubscribing stream calls it again on the next server.
    static let serviceGracePeriod: Duration = .milliseconds(100)

    /// Serves ``DemoService`` on `path`, calls it with a ``ServiceClient`` and watches its counter with a
    /// resubscribing stream, restarts the server (a graceful shutdown, then a new server on the same path), and
    /// shows the watch carrying on and a call going through on the new server. Prints what the client sees, its
    /// state changes included, in the order it sees them: everything is printed from this one task.
    static func runService(at path: String, logger: Logger) async throws {
        Output.line(
            "[demo]           a typed service, and a client that starts before its server and rides out a restart")
        // The counter outlives the servers, as a database would.
        let counter = SharedCounter()
        var configuration = ServiceClientConfiguration()
        // A failed attempt is retried after about 100 ms (±20 %): long enough for the new server to be up.
        configuration.backoff = ConnectionBackoff(initialDelay: .milliseconds(100), maximumDelay: .seconds(1))
        let client = ServiceClient(path: path, configuration: configuration, logger: logger)
        // Subscribed before run(): every state is seen, in order.
        var states = client.states.makeAsyncIterator()
        let options = CallOptions(timeout: .seconds(10))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            do {
                // It subscribes once a connection is ready, and again on each new one.
                var changes = client.resubscribing(DemoService.Counter.self, .object([:])).makeAsyncIterator()
                // The client starts first: it finds nobody there, and waits to retry.
                await Self.printStates(&states, until: \.isWaitingToRetry)
                try await Self.withServiceServer("first", at: path, counter: counter, logger: logger) {
                    await Self.printStates(&states, until: { $0 == .ready })
                    let echoed = try await client.call(DemoService.Echo.self, .string("hello"), options: options)
                    Self.serviceClient("call demo.echo \"hello\" -> \(Self.describe(echoed))")
                    Self.serviceClient("watch demo.counter: \(try await Self.next(&changes))")
                    let value = try await client.call(DemoService.Increment.self, 1, options: options)
                    Self.serviceClient("call demo.increment 1 -> \(value)")
                    Self.serviceClient("watch demo.counter: \(try await Self.next(&changes))")
                    Output.line(
                        "[demo]           restarting the server: a graceful shutdown, which cuts the watch off "
                            + "after \(milliseconds(Self.serviceGracePeriod)) ms"
                    )
                }
                Output.line("[server service] the first server stopped and removed its socket file")
                await Self.printStates(&states, until: \.isWaitingToRetry)
                try await Self.withServiceServer("second", at: path, counter: counter, logger: logger) {
                    await Self.printStates(&states, until: { $0 == .ready })
                    let resubscribed = try await Self.next(&changes)
                    Self.serviceClient("watch demo.counter: \(resubscribed) (resubscribed, from the second server)")
                    let value = try await client.call(DemoService.Increment.self, 2, options: options)
                    Self.serviceClient("call demo.increment 2 -> \(value)")
                    Self.serviceClient("watch demo.counter: \(try await Self.next(&changes))")
                    client.shutdown()
                    await Self.printStates(&states, until: { $0 == .shutDown })
                }
            } catch {
                client.shutdown()
                try? await group.waitForAll()
                throw error
            }
            try await group.waitForAll()
        }
    }

    /// Runs a server of ``DemoService`` at `path` for the length of `body`, then shuts it down gracefully and waits
    /// until it has stopped.
    private static func withServiceServer(
        _ ordinal: String,
        at path: String,
        counter: SharedCounter,
        logger: Logger,
        _ body: () async throws -> Void
    ) async throws {
        var configuration = ServerConfiguration(path: path)
        configuration.shutdownGracePeriod = Self.serviceGracePeriod
        let router = DemoService.router(counter: counter)
        let (running, serverRunning) = AsyncStream.makeStream(of: Void.self)
        // Server.framed rather than Server.service for its onServerRunning.
        let server = Server.framed(
            configuration: configuration,
            logger: logger,
            onServerRunning: { _ in serverRunning.yield() }
        ) {
            ServiceConnectionHandler(router: router)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                defer { serverRunning.finish() }
                try await server.run()
            }
            var isRunning = running.makeAsyncIterator()
            guard await isRunning.next() != nil else {
                // run() returned before it ran: its error, if it threw one.
                try await group.waitForAll()
                throw SocketIPCError(.invalidState, "the \(ordinal) service server stopped before it ran", path: path)
            }
            Output.line("[server service] the \(ordinal) server listens on \(path)")
            do {
                try await body()
            } catch {
                server.shutdownGracefully()
                try? await group.waitForAll()
                throw error
            }
            server.shutdownGracefully()
            try await group.waitForAll()
        }
    }

    /// Prints the client's states as they come until one satisfies `isLast` (printed too), or the states end.
    private static func printStates(
        _ states: inout AsyncStream<ServiceClient.State>.Iterator,
        until isLast: (ServiceClient.State) -> Bool
    ) async {
        while let state = await states.next() {
            // The state before run() started.
            if state == .idle { continue }
            Self.serviceClient("state: \(Self.describe(state))")
            if isLast(state) { return }
        }
    }

    /// The next value of the watch.
    /// - Throws: `invalidState` when the watch ended, and what it threw.
    private static func next(_ changes: inout ResubscribingStream<Int>.AsyncIterator) async throws -> Int {
        guard let value = try await changes.next() else {
            throw SocketIPCError(.invalidState, "the watch of demo.counter ended")
        }
        return value
    }

    private static func serviceClient(_ text: String) {
        Output.line("[service client] " + text)
    }

    /// A state as the demo prints it: as ``ServiceClient/State/description`` has it, with the retry's delay in
    /// whole milliseconds.
    private static func describe(_ state: ServiceClient.State) -> String {
        guard case .waitingToRetry(let retry, let delay, let error) = state else { return state.description }
        return "waiting to retry (\(retry)) in \(milliseconds(delay)) ms: \(error.code)"
    }

    private static func describe(_ value: JSONValue) -> String {
        if case .string(let text) = value { return "\"\(text)\"" }
        return "\(value)"
    }
}

/// `duration` in whole milliseconds.
private func milliseconds(_ duration: Duration) -> Int64 {
    duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
}

extension ServiceClient.State {
    /// Whether the client is waiting to retry after a failed attempt.
    fileprivate var isWaitingToRetry: Bool {
        if case .waitingToRetry = self { true } else { false }
    }
}
