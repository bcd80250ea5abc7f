import Logging
import NIOCore
import ServiceLifecycle
import SocketIPCCore
import Synchronization

/// A client of a service that survives its server's restarts: it connects when the server comes up, reconnects
/// with backoff after a loss, runs an `onConnect` step on each new connection, retries calls of idempotent methods,
/// and reports its state.
///
/// ```swift
/// let client = ServiceClient(path: "/run/kv.sock")
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await client.run() }
///     let value = try await client.call(Get.self, "colour")   // waits for the server, bounded
///     for try await change in client.resubscribing(Watch.self, "colour") { print(change) }  // across restarts
///     client.shutdown()
/// }
/// ```
///
/// ``run()`` owns the connection: it connects, waits for the connection to close, and connects again, until
/// ``shutdown()`` or until its task is cancelled. It is a ServiceLifecycle `Service`, so a `ServiceGroup` can run it
/// (a graceful shutdown of the group shuts it down). Calls may start before ``run()`` does: they wait for a
/// connection (``ServiceClientConfiguration/waitForConnectionTimeout``).
///
/// What happens to a call whose connection is lost: a unary call of an idempotent method
/// (``ServiceMethod/isIdempotent``) is repeated on the next connection, up to
/// ``ServiceClientConfiguration/maximumRetries`` times; so is a unary call of any method that never reached the
/// server (its connection closed or went away before the call was written, as when the server died a moment
/// before) or that the server refused at its open as it went away (status unavailable, its handler not run): gRPC's
/// transparent retry. Any other call fails with the transport's error (`connectionClosed`,
/// `peerGoingAway`, `peerNotResponding`), since it may have had its effect.
public final class ServiceClient: Sendable, Service {
    /// The socket path of the server.
    public let path: String
    /// How the client connects, reconnects and waits.
    public let configuration: ServiceClientConfiguration
    let router: ServiceRouter?
    let onConnect: (@Sendable (Connection) async throws -> Void)?
    let logger: Logger

    typealias Machine = ReconnectStateMachine<Connection, CheckedContinuation<Connection, any Error>>
    let machine: Mutex<Machine>
    let published = Mutex(Published())
    let nextSubscriberID = Atomic<Int>(0)
    let nextWaiterID = Atomic<Int>(0)
    let shutdownRequested = OneShotSignal()
    let lastClose = Mutex<SocketIPCError?>(nil)
    /// Connections whose server said going-away while calls were in progress on them: they finish there, and are
    /// closed by ``shutdown()`` if still open.
    let draining = Mutex<[ObjectIdentifier: Connection]>([:])

    /// Why the client's last connection closed, once one has: `peerGoingAway` with the server's text after a graceful
    /// shutdown, `connectionClosed` after a crash or `SIGKILL`, `peerNotResponding` when it stopped answering pings
    /// (see `Connection.closeReason`); `nil` before, and when this side closed it.
    public var lastCloseReason: SocketIPCError? { self.lastClose.withLock { $0 } }

    /// Creates a client; it connects once ``run()`` runs.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - configuration: How to connect, reconnect and wait; default ``ServiceClientConfiguration/init()``.
    ///   - router: Methods this client serves for its server to call back; default none.
    ///   - logger: Where the client logs its connections and retries; default `socketipc.service-client`.
    ///   - onConnect: Runs on each new connection before calls use it (to authenticate, or to register); if it
    ///     throws, the connection is closed and the attempt counts as failed.
    public init(
        path: String,
        configuration: ServiceClientConfiguration = ServiceClientConfiguration(),
        router: ServiceRouter? = nil,
        logger: Logger = Logger(label: "socketipc.service-client"),
        onConnect: (@Sendable (Connection) async throws -> Void)? = nil
    ) {
        self.path = path
        self.configuration = configuration
        self.router = router
        self.logger = logger
        self.onConnect = onConnect
        self.machine = Mutex(Machine(backoff: configuration.backoff))
    }

    /// Connects, and connects again whenever the connection is lost, until ``shutdown()`` is called or the task is
    /// cancelled (or a ServiceLifecycle graceful shutdown begins); then closes the connection and returns.
    /// - Throws: The `SocketIPCError` that makes connecting pointless (`unauthorized`: the server's policy refuses
    ///   this process; `notSocketIPCPeer`, `unsupportedVersion`, `wrongStyle`, `invalidPath`). A socket file whose
    ///   mode refuses this process (`unauthorized` from `connect(2)`'s `EACCES`) is retried with the backoff, as a
    ///   server that starts again may make it anew; the state stream shows it. `invalidState` at
    ///   once, changing nothing, when `run()` is running already or has failed (after ``shutdown()`` it returns at
    ///   once).
    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                try await self.drive()
            } onCancel: {
                self.shutdown()
            }
        } onGracefulShutdown: {
            self.shutdown()
        }
    }

    /// Whether ``shutdown()`` was called: the state machine is shut down (before the waiters it fails are resumed,
    /// which ``shutdownRequested`` is not yet at that moment).
    var isShutDown: Bool {
        self.machine.withLock { machine in
            if case .shutDown = machine.state { true } else { false }
        }
    }

    /// Stops: closes the connection (after what is written), fails calls waiting for a connection, and makes
    /// ``run()`` return. Safe to call more than once, from any task.
    public func shutdown() {
        let (connection, waiters, neverRan) = self.machine.withLock { machine in
            let neverRan = if case .idle = machine.state { true } else { false }
            let (connection, waiters) = machine.shutdown()
            return (connection, waiters, neverRan)
        }
        for waiter in waiters { waiter.resume(throwing: SocketIPCError(.invalidState, "the client is shut down")) }
        connection?.close()
        for draining in self.draining.withLock({ $0.values }) { draining.close() }
        self.shutdownRequested.fire()
        // run() announces the end once it returns; without it, nothing else would, and `states` would never end.
        if neverRan { self.publish(.shutDown) }
    }

    private func drive() async throws {
        var action = self.machine.withLock { $0.start() }
        while true {
            switch action {
            case .connect(let attempt):
                self.publish(.connecting(attempt: attempt))
                action = await self.connect()
            case .retry(let delay, let retry, let error):
                self.publish(.waitingToRetry(retry: retry, delay: delay, error: error))
                self.logger.debug(
                    "cannot connect; retrying",
                    metadata: ["path": "\(self.path)", "error": "\(errorText(error))", "delay": "\(delay)"]
                )
                await self.shutdownRequested.wait(upTo: delay)
                action = self.machine.withLock { $0.retryDue() }
            case .stop:
                self.publish(.shutDown)
                return
            case .fail(let error):
                self.publish(.failed(error))
                throw error
            case .alreadyRunning:
                // The running one keeps the state: a second run() must not announce a shutdown that did not happen.
                throw SocketIPCError(.invalidState, "run() was called on this client already")
            }
        }
    }

    /// One attempt: connect, run `onConnect`, hand the connection to the waiting calls, and wait for its close.
    private func connect() async -> Machine.Action {
        let connection: Connection
        do {
            connection = try await self.connectUntilShutdown()
        } catch {
            return self.failed(error)
        }
        let waiters = self.machine.withLock { $0.connected(connection, at: .now) }
        guard case .ready = self.machine.withLock({ $0.state }) else {
            // Shut down meanwhile.
            connection.close()
            return .stop
        }
        self.publish(.ready)
        self.logger.debug("connected", metadata: ["path": "\(self.path)"])
        for waiter in waiters { waiter.resume(returning: connection) }
        await self.waitUntilClosedOrGoingAway(connection)
        let reason = connection.closeReason ?? connection.peerGoingAwayError
        self.lastClose.withLock { $0 = reason }
        if let reason {
            // At debug level: `states` and `lastCloseReason` tell the application, which decides what to show.
            self.logger.debug("connection lost", metadata: ["path": "\(self.path)", "reason": "\(reason)"])
        }
        let random = Double.random(in: 0..<1)
        return self.machine.withLock { $0.connectionLost(connection, at: .now, error: reason, random: random) }
    }

    /// Waits until `connection` is closed, or its server said going-away: then new calls wait for the next
    /// connection, which is made at once, as gRPC's client reconnects on GOAWAY, while the calls in progress finish on
    /// this one, which is kept among the ``draining`` until it closes (found by a review: while a server drained a
    /// long call, the client stayed ready and failed new calls it never sent with `peerGoingAway`).
    private func waitUntilClosedOrGoingAway(_ connection: Connection) async {
        let signal = OneShotSignal()
        CallMultiplexer.of(connection).whenPeerGoingAway(on: connection) { signal.fire() }
        await signal.waitUntilFired()
        guard connection.isOpen else {
            await connection.waitUntilClosed()
            return
        }
        let id = ObjectIdentifier(connection)
        self.draining.withLock { $0[id] = connection }
        connection.whenClosed { [weak self] in _ = self?.draining.withLock { $0.removeValue(forKey: id) } }
        if self.isShutDown { connection.close() }
    }

    /// Connects and runs `onConnect`, unless ``shutdown()`` comes first: it cancels both (found by a review: a
    /// shutdown while `onConnect` waited for a call the server never answered, or while a frozen server's connect
    /// waited for its hello, did not end ``run()`` until that wait ended). A connection made all the same is closed.
    /// - Throws: What connecting or `onConnect` threw; `invalidState` after a shutdown.
    private func connectUntilShutdown() async throws -> Connection {
        let shutDown = SocketIPCError(.invalidState, "the client is shut down")
        let (path, configuration, router, logger, onConnect) =
            (self.path, self.configuration.connection, self.router, self.logger, self.onConnect)
        let shutdownRequested = self.shutdownRequested
        return try await withThrowingTaskGroup(of: Connection?.self) { group in
            group.addTask {
                let connection = try await Client.connect(
                    to: path,
                    configuration: configuration,
                    handler: ServiceClientConnectionHandler(router: router),
                    logger: logger
                )
                do {
                    try await onConnect?(connection)
                } catch {
                    connection.close()
                    throw error
                }
                return connection
            }
            group.addTask {
                await shutdownRequested.waitUntilFired()
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            if let first {
                return first
            }
            // Shut down first: the connect or onConnect, cancelled, ends; a connection it still made is closed.
            while let made = try? await group.next() { made?.close() }
            throw shutDown
        }
    }

    private func failed(_ error: any Error) -> Machine.Action {
        let failure =
            error as? SocketIPCError
            ?? SocketIPCError(.connectionClosed, "the connection's setup failed: \(errorText(error))", cause: error)
        // The socket file's mode, unlike the server's policy, may change when the server starts again (a stale file
        // of a killed server, made anew): retried, as gRPC retries any failed connect (found by a review: a client
        // started before its server replaced such a file gave up for good).
        let retryable = failure.isSocketFilePermissionDenied
        let (action, waiters) = self.machine.withLock {
            $0.connectFailed(failure, retryable: retryable, random: Double.random(in: 0..<1))
        }
        for waiter in waiters { waiter.resume(throwing: failure) }
        return action
    }
}

/// The handler of a ``ServiceClient``'s connections: serves the client's router, if it has one.
struct ServiceClientConnectionHandler: ConnectionHandler, Sendable {
    let router: ServiceRouter?

    func connectionDidOpen(_ connection: Connection) {
        if let router { CallMultiplexer.install(router: router, on: connection) }
    }
}
