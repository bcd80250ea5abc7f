import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@_spi(SocketIPCRuntime) import SocketIPCCore
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A server on a Unix domain socket file: it owns the path safely, accepts connections in a loop and serves each
/// concurrently, and removes the file when it stops.
///
/// Make one with ``framed(configuration:logger:onServerRunning:makeHandler:)`` (many messages per connection,
/// requests and replies) or ``eof(configuration:logger:onServerRunning:handler:)`` (one message per connection, ended
/// by the client's half-close, as `socat` and `nc -U` send it). Then call ``run()``, directly or through
/// swift-service-lifecycle's `ServiceGroup`: the server is a `Service`.
///
/// ```swift
/// let server = Server.framed(configuration: .init(path: "/tmp/app.sock")) {
///     AsyncRequestHandler { request, _ in request }  // echo
/// }
/// try await server.run()
/// ```
///
/// ``waitUntilRunning()`` waits until the socket accepts connections. While the server runs, ``connections`` lists
/// its open framed connections and ``broadcast(_:where:)`` sends a message to them all.
///
/// A graceful shutdown (``shutdownGracefully()`` or the service group's) stops accepting, runs the
/// ``onGracefulShutdown(_:)`` bodies, tells every framed client it is going away, lets requests in flight finish
/// within ``ServerConfiguration/shutdownGracePeriod``, closes what is left and removes the socket file. Cancelling the
/// task that runs ``run()`` does the same without the grace period.
///
/// Handlers' async work (``Reply/complete(_:)``, ``AsyncRequestHandler``, EOF-style `collecting` and `streaming`
/// handlers) runs in child tasks of the task that runs ``run()``, one group per connection: it is cancelled when its
/// connection closes and when the grace period ends, and ``run()`` returns only once it has ended.
public final class Server: Service, Sendable {
    /// What the server's state machine holds of the runtime.
    typealias StateMachine = ServerStateMachine<Acceptor, any Channel, Connection, Scheduled<Void>>

    /// The configuration the server was made with.
    public let configuration: ServerConfiguration
    let logger: Logger
    private let onServerRunning: @Sendable (SocketPath) async -> Void
    /// How the server's style serves each connection it admits.
    let initializer: any ConnectionInitializer
    /// The state machine, and beside it the tasks waiting for the server to run and the shutdown hooks.
    let state: Mutex<ServerState>
    let metrics: ServerMetrics
    /// Logs refusals, which a hostile peer can cause at any rate.
    let refusalLogger: RateLimitedLogger
    /// Where the connections' handlers run their async work; ``run()`` drives it.
    let handlerTasks = HandlerTaskGroup()
    /// The relays of the connections that pass descriptors, by connection id, until each has finished: a shutdown
    /// that no longer waits (its grace period ended, or it was forced) cuts them off, instead of letting each write to
    /// a peer that does not read for its own ``ConnectionOptions/closeTimeout``.
    let relays = Mutex<[UInt64: DescriptorRelay]>([:])
    /// The cancel allowances of the server's peers by user, each spent by all of that user's connections, and their
    /// calls and requests in progress.
    let userCalls: UserCallAccounts
    /// The bytes of frames not yet whole that each user's connections hold (``ServerConfiguration/maximumIncomingBytesPerUser``).
    let incomingBytes: UserIncomingBytes
    /// The clock the server's cancel allowances read (``CancelAllowance``); tests set it by hand.
    package var cancelClock: CancelClock { self.userCalls.clock }

    init(
        configuration: ServerConfiguration,
        metrics: ServerMetrics,
        logger: Logger,
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void,
        initializer: some ConnectionInitializer
    ) {
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.refusalLogger = RateLimitedLogger(logger)
        self.onServerRunning = onServerRunning
        self.initializer = initializer
        self.incomingBytes = UserIncomingBytes(limit: configuration.maximumIncomingBytesPerUser)
        self.userCalls = UserCallAccounts(requestLimit: configuration.maximumConcurrentRequestsPerUser)
        let admissions = ConnectionAdmissions(
            maximumConnections: configuration.maximumConnections,
            maximumConnectionsPerUser: configuration.maximumConnectionsPerUser,
            maximumPendingHandshakesPerUser: configuration.maximumPendingHandshakesPerUser
        )
        self.state = Mutex(ServerState(machine: StateMachine(admissions: admissions)))
    }

    /// Serves until shut down: claims the socket path, accepts connections, and on shutdown closes them and
    /// removes the socket file. Returns once every connection is closed and its handlers' work has ended: async
    /// handler work (``Reply/complete(_:)``, ``AsyncRequestHandler``, EOF-style `collecting` and `streaming`
    /// handlers) runs in child tasks of the task that calls this, cancelled when the grace period ends, so work that
    /// ignores cancellation keeps this from returning.
    ///
    /// ``waitUntilRunning()`` returns once the socket accepts connections, and throws what this throws.
    /// - Throws: `SocketIPCError` when the path cannot be claimed: `invalidPath`, `parentDirectoryMissing`,
    ///   `insecureDirectory`, `addressInUse`, `pathOccupied`, `systemCall`; `invalidConfiguration` when the open file
    ///   limit (`RLIMIT_NOFILE`, raised as far as the hard limit allows) holds not one connection of this
    ///   configuration; or `invalidState` when called a second time, or after the server was shut down. Once it has thrown, the server is finished. Also `systemCall`
    ///   (`accept`) when accepting fails for good while serving (the listening socket was shut down or closed under
    ///   it; running out of descriptors or memory only makes it back off): the server then shuts down gracefully and
    ///   this throws once it has, so that a supervisor sees it end, as Go's `http.Server.Serve` returns its listener's
    ///   error.
    public func run() async throws {
        switch self.state.withLock({ $0.machine.runCalled() }) {
        case .startListening:
            break
        case .failAlreadyRan:
            throw SocketIPCError(.invalidState, "Server.run() may be called only once", path: self.configuration.path)
        }
        let listener: ServerListener
        do {
            try self.fitLimitsToDescriptors()
            listener = try ServerListener.open(self.configuration)
        } catch {
            self.state.withLock { $0.machine.listenFailed() }
            self.endStartup(.failed(error))
            throw error
        }
        if let leftover = listener.leftover {
            // Found by fault injection: the empty private directory of the bind was left beside the socket silently.
            self.logger.warning(
                "the private directory the socket was bound in could not be removed; it is empty and may be deleted",
                metadata: ["error": "\(leftover)"]
            )
        }
        // While it runs, its socket file and lock file keep fresh times, so that a cleaner of old files leaves them.
        // A socket file that is no longer the server's (removed by hand or by a cleaner, or replaced) is logged once:
        // the server goes on serving its connections, but no client can reach it at the path any more (found by a
        // review: only a second server's failed start told, with "another server is serving").
        let refresher = listener.owner.map { owner in
            let interval = TimeAmount(self.configuration.socketFileRefreshInterval)
            let logger = self.logger
            let reported = NIOLockedValueBox(false)
            return MultiThreadedEventLoopGroup.singleton.any().scheduleRepeatedTask(
                initialDelay: interval,
                delay: interval
            ) { _ in
                guard !owner.refreshTimestamps(),
                    !reported.withLockedValue({ reported in defer { reported = true }; return reported })
                else { return }
                logger.error(
                    """
                    the socket file of this server was removed or replaced: clients can no longer reach it at its \
                    path; restart the server to serve there again (it keeps the lock file until it stops)
                    """,
                    metadata: ["path": "\(owner.path)"]
                )
            }
        }
        defer {
            refresher?.cancel()
            listener.owner?.release()
        }
        let path = listener.path

        let acceptFailure = Mutex<SocketIPCError?>(nil)
        let acceptor = Acceptor(
            descriptor: listener.descriptor,
            sharesListeningSocket: listener.isShared,
            eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
            logger: self.logger,
            onAccept: { [refuses = !listener.isShared] descriptor in self.accept(descriptor, listenerRefusesDescriptors: refuses) },
            waitForRoom: { stopping in ChannelSetupQueue.shared.waitForRoom(unless: stopping) },
            onError: { error in
                self.logger.error("accepting connections failed; shutting down", metadata: ["error": "\(errorText(error))"])
                acceptFailure.withLock { $0 = error }
                self.shutDown(graceful: true)
            }
        )
        let listening = self.state.withLock { $0.machine.listening(acceptor) }
        // Started even when shutting down at once: the acceptor closes the listening socket when it stops.
        acceptor.start()
        switch listening {
        case .serve:
            self.endStartup(.running)
        case .shutDown(let shutdown):
            self.endStartup(.stoppedBeforeRunning(self.stoppedBeforeRunning()))
            self.perform(shutdown)
        }
        self.logger.info("listening", metadata: ["socketipc.path": "\(path)"])

        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                async let running: Void = self.onServerRunning(path)
                // Returns once the server has drained and its handlers' work has ended.
                await self.handlerTasks.run()
                self.state.withLock { state in
                    state.handlerWorkEnded = true
                    return state.drainedGracePeriodTimer.take()
                }?.cancel()
                await running
            } onCancel: {
                self.shutDown(graceful: false)
            }
        } onGracefulShutdown: {
            self.shutDown(graceful: true)
        }
        try? await acceptor.finishedFuture.get()
        self.logger.info("stopped", metadata: ["socketipc.path": "\(path)"])
        if let failure = acceptFailure.withLock({ $0 }) { throw failure }
    }

    /// Starts a graceful shutdown: stop accepting, run the ``onGracefulShutdown(_:)`` bodies, tell clients, let
    /// requests in flight finish within the grace period, close, and remove the socket file; ``run()`` returns when
    /// that is done. Safe to call more than once, from any thread; before ``run()``, the server is then finished
    /// without running.
    public func shutdownGracefully() {
        self.shutDown(graceful: true)
    }

    /// Raises the descriptor limit as far as the connection limits need, and lowers the connection limits to what
    /// it can hold, and with descriptor passing on to what the process's thread limit can hold, saying so.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` when the descriptor limit holds not one
    ///   connection: such a server would listen and close every connection it accepts (found by a review: `prlimit
    ///   --nofile=64` with descriptor passing on).
    private func fitLimitsToDescriptors() throws {
        // A connection that holds its peer's pidfd costs two descriptors. One that passes descriptors costs three (its
        // socket and its relay's socket pair) and what its relay may hold: the descriptors received and not yet
        // handed out (DescriptorRelay.inFlightLimit) and those of one message not yet claimed; and those its calls
        // may hold for their readers (Connection.maximumDescriptorsHeldByCalls).
        var perConnection = self.configuration.connection.holdsPeerProcess ? 2 : 1
        let maximumDescriptors = self.configuration.connection.effectiveMaximumDescriptors
        if maximumDescriptors > 0 {
            perConnection +=
                2 + DescriptorRelay.inFlightLimit(maximumPerMessage: maximumDescriptors) + maximumDescriptors
                + Connection.maximumDescriptorsHeldByCalls(maximumPerMessage: maximumDescriptors)
        }
        let (needed, overflows) = self.configuration.maximumConnections.multipliedReportingOverflow(by: perConnection)
        let limit = DescriptorLimit.raise(
            toFit: overflows ? Int.max : needed,
            reserving: self.configuration.reservedDescriptors
        )
        if limit.soft > limit.previousSoft {
            self.logger.info(
                "raised the open file limit (RLIMIT_NOFILE) for maximumConnections",
                metadata: ["from": "\(limit.previousSoft)", "to": "\(limit.soft)"]
            )
        }
        let connections = limit.connections / perConnection
        guard connections >= 1 else {
            throw SocketIPCError(
                .invalidConfiguration,
                "the open file limit (RLIMIT_NOFILE) of \(limit.soft) holds no connection: each needs \(perConnection) "
                    + "descriptors (ConnectionOptions.maximumDescriptorsPerMessage is \(maximumDescriptors)) besides "
                    + "the \(limit.reserve) the process keeps for its other files (ServerConfiguration."
                    + "reservedDescriptors: \(max(0, self.configuration.reservedDescriptors)) of them); raise the limit "
                    + "(ulimit -n, LimitNOFILE=), or lower maximumDescriptorsPerMessage or reservedDescriptors "
                    + "(socket-ipc serve: --max-descriptors, --exec-concurrency)",
                path: self.configuration.path
            )
        }
        if let lowered = self.state.withLock({ $0.machine.fitLimits(toHold: connections) }) {
            self.logger.warning(
                """
                the open file limit (RLIMIT_NOFILE) is too low for the connection limits: serving at most \
                \(lowered.maximumConnections) connections, \(lowered.maximumConnectionsPerUser) per user, besides \
                the \(limit.reserve) descriptors kept for the process's other files (reservedDescriptors included); \
                raise the limit (ulimit -n, LimitNOFILE=) to serve more
                """,
                metadata: ["limit": "\(limit.soft)"]
            )
        }
        if maximumDescriptors > 0 { self.fitLimitsToThreads(ThreadLimit.current()) }
    }

    /// Lowers the connection limits to what `threads` can hold with a relay of two threads per connection, saying
    /// so: one user's connections could otherwise take every thread the process may start, and with them every other
    /// user's connections and whatever else of the process starts a thread or a process.
    private func fitLimitsToThreads(_ threads: ThreadLimit) {
        guard let connections = threads.relayedConnections, let available = threads.available,
            let lowered = self.state.withLock({ $0.machine.fitLimits(toHold: connections) })
        else { return }
        self.logger.warning(
            """
            the thread limit is too low for the connection limits with descriptor passing on (a relay of two \
            threads per connection): serving at most \(lowered.maximumConnections) connections, \
            \(lowered.maximumConnectionsPerUser) per user, besides the \(threads.reserve) threads kept for the \
            process's own; raise the limit (TasksMax=, pids.max, ulimit -u, LimitNPROC=) to serve more
            """,
            metadata: ["threadsAvailable": "\(available)"]
        )
    }

    // MARK: - Shutting down

    /// Asks for a shutdown, graceful or forced, and takes the steps the state machine answers with. The first
    /// request starts the shutdown hooks: as part of the drain if the server runs, else in a task of their own.
    private func shutDown(graceful: Bool) {
        let (action, hooksOnTheirOwn, stopped) = self.state.withLock { state in
            let phase = state.machine.phase
            let hasHooks = state.shutdownHooks.begin()
            let action = state.machine.shutdownRequested(
                graceful: graceful,
                runningShutdownHooks: hasHooks && phase == .running
            )
            // A server that never ran is finished now: its waiters learn that it will not run.
            let stopped = phase == .idle ? state.startup.end(.stoppedBeforeRunning(self.stoppedBeforeRunning())) : nil
            return (action, hasHooks && phase != .running, stopped)
        }
        if let stopped {
            for waiter in stopped.waiters { waiter.resume(with: stopped.result) }
        }
        if hooksOnTheirOwn { Task { await self.runShutdownHooks(inDrain: false) } }
        if case .shutDown(let shutdown) = action { self.perform(shutdown) }
    }

    /// The error of a server shut down before it accepted connections, for ``waitUntilRunning()``.
    private func stoppedBeforeRunning() -> SocketIPCError {
        SocketIPCError(
            .invalidState,
            "the server was shut down before it accepted connections",
            path: self.configuration.path
        )
    }

    /// Takes the steps of a shutdown, outside the lock.
    private func perform(_ shutdown: StateMachine.Shutdown) {
        self.logger.info("shutting down", metadata: ["graceful": "\(shutdown.graceful)"])
        shutdown.stopListening?.stop()
        for parked in shutdown.closeParked {
            close(parked.descriptor)
            self.metrics.active.decrement()
        }
        if shutdown.runShutdownHooks { self.startShutdownHooksInDrain() }
        for connection in shutdown.tellGoingAway {
            connection.goAway(.normal, message: "the server is shutting down")
        }
        for channel in shutdown.closeChannels { channel.close(promise: nil) }
        // A closed connection's relay kept for a peer that holds shared payloads unread is not waited for.
        for relay in self.relays.withLock({ Array($0.values) }) { relay.stopLingering() }
        if !shutdown.graceful { self.abortRelays() }
        if shutdown.cancelHandlerTasks { self.handlerTasks.cancelAll() }
        shutdown.cancelGracePeriodTimer?.cancel()
        if shutdown.armGracePeriodTimer { self.armGracePeriodTimer() }
        if shutdown.drained {
            // No connection was left to drain, but handler work may go on without one: the grace period bounds it.
            if shutdown.graceful { self.boundHandlerWorkByGracePeriod() }
            self.handlerTasks.finish()
        }
    }

    /// Cancels the handlers' work once the grace period has passed, unless ``run()`` is done with it first: for a
    /// graceful shutdown that found no connection to wait for.
    private func boundHandlerWorkByGracePeriod() {
        let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(
            in: .init(self.configuration.shutdownGracePeriod)
        ) {
            self.handlerTasks.cancelAll()
        }
        self.state.withLock { $0.keepDrainedGracePeriodTimer(timer) }?.cancel()
    }

    /// Schedules the end of a graceful shutdown's grace period, and tells the state machine, which cancels it at
    /// once if the drain completed meanwhile.
    /// Cuts off every relay still writing to its peer: the shutdown waits no longer (see ``relays``). A relay that has
    /// not finished ``stuckRelayTime`` later is stuck in the kernel, in the last close of its socket (a socket the peer
    /// left in its queue whose own close waits: a TCP socket with `SO_LINGER`); its connection is then counted as
    /// closed, so that ``run()`` returns, and the thread is left to the kernel (found by a review: `SIGTERM` was still
    /// running after 30 s).
    private func abortRelays() {
        for relay in self.relays.withLock({ Array($0.values) }) {
            relay.stopLingering()
            relay.abort()
        }
        MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: .init(Self.stuckRelayTime)) {
            let stuck = self.relays.withLock { relays in
                defer { relays = [:] }
                return Array(relays.keys)
            }
            guard !stuck.isEmpty else { return }
            self.logger.warning(
                "connections whose relays are stuck closing their sockets (a socket their peer passed whose close waits) are no longer waited for",
                metadata: ["socketipc.connections": "\(stuck.count)"]
            )
            for id in stuck { self.connectionClosed(id) }
        }
    }

    /// How long a shutdown that no longer waits gives its cut-off relays to finish before it counts their connections
    /// as closed: 1 second.
    static let stuckRelayTime: Duration = .seconds(1)

    private func armGracePeriodTimer() {
        let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(
            in: .init(self.configuration.shutdownGracePeriod)
        ) {
            if case .shutDown(let shutdown) = self.state.withLock({ $0.machine.gracePeriodEnded() }) {
                self.perform(shutdown)
            } else {
                // Every connection closed within the grace period, and handler work goes on without one.
                self.handlerTasks.cancelAll()
            }
            // Relays still writing what their closed connections wrote are cut off too: nothing waits any more.
            self.abortRelays()
        }
        // The drain completed before the machine knew of the timer (or a forced shutdown superseded this one): the
        // timer still bounds the handlers' work that goes on without a connection, as `drained` keeps it.
        let leftOver = self.state.withLock { state -> Scheduled<Void>? in
            guard case .cancel(let timer) = state.machine.gracePeriodTimerArmed(timer) else { return nil }
            return state.keepDrainedGracePeriodTimer(timer)
        }
        leftOver?.cancel()
    }

    /// Forgets a closed connection (once: later calls for the same id do nothing), hands a parked connection of the
    /// same user its handshake slot, and completes the drain of a shutdown when it was the last one.
    func connectionClosed(_ id: UInt64) {
        let closed = self.state.withLock { $0.machine.connectionClosed(id, now: .now()) }
        if closed.wasCounted { self.metrics.active.decrement() }
        self.handOff(closed.parked)
        self.drained(closed.drained, gracePeriodTimer: closed.cancelGracePeriodTimer)
    }

    /// Completes the drain of a shutdown when `drained`: lets ``run()`` return once the handlers' work has ended,
    /// which the grace period's timer, kept running, still bounds.
    func drained(_ drained: Bool, gracePeriodTimer: Scheduled<Void>?) {
        guard drained else {
            gracePeriodTimer?.cancel()
            return
        }
        if let gracePeriodTimer { self.state.withLock { $0.keepDrainedGracePeriodTimer(gracePeriodTimer) }?.cancel() }
        self.handlerTasks.finish()
    }
}
