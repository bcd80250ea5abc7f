import NIOCore
import Testing

@_spi(SocketIPCRuntime) @testable import SocketIPCCore

/// The listener, channels, connections and timers are plain strings here.
private typealias Machine = ServerStateMachine<String, String, String, String>

@Suite("ServerStateMachine")
struct ServerStateMachineTests {
    private static func peer(_ uid: UInt32) -> PeerCredentials {
        PeerCredentials(processID: 1, userID: uid, groupID: uid)
    }

    private static let later = NIODeadline.uptimeNanoseconds(1_000_000)

    /// A machine that runs and listens on `listener`.
    private static func running(
        maximumConnections: Int = 100,
        maximumConnectionsPerUser: Int = 10,
        maximumPendingHandshakesPerUser: Int = 10
    ) -> Machine {
        var machine = Machine(
            admissions: ConnectionAdmissions(
                maximumConnections: maximumConnections,
                maximumConnectionsPerUser: maximumConnectionsPerUser,
                maximumPendingHandshakesPerUser: maximumPendingHandshakesPerUser
            )
        )
        #expect(machine.runCalled() == .startListening)
        guard case .serve = machine.listening("listener") else {
            Issue.record("a running machine did not serve")
            return machine
        }
        return machine
    }

    /// Accepts connection `id` of user `uid`, authorized, with its handshake time up at `deadline`.
    private static func accept(
        _ id: UInt64,
        user uid: UInt32 = 7,
        deadline: NIODeadline = later,
        into machine: inout Machine
    ) -> Machine.AcceptAction {
        machine.connectionAccepted(
            id,
            descriptor: Int32(100 + id),
            peer: Self.peer(uid),
            authorized: true,
            handshakeDeadline: deadline
        )
    }

    /// Accepts and sets up a framed connection `id`: channel `c<id>`, connection `f<id>`.
    private static func open(_ id: UInt64, into machine: inout Machine) {
        #expect(Self.accept(id, into: &machine) == .serve)
        #expect(machine.channelInitialized(id, channel: "c\(id)") == .keep)
        #expect(machine.connectionOpened(id, connection: "f\(id)") == .serve)
    }

    private static func shutdown(_ action: Machine.ShutdownAction) -> Machine.Shutdown? {
        guard case .shutDown(let shutdown) = action else { return nil }
        return shutdown
    }

    @Test("run() may be called only once, and not after a shutdown or a failed start")
    func runTwice() {
        var machine = Self.running()
        #expect(machine.runCalled() == .failAlreadyRan)
        #expect(machine.phase == .running)

        var idle = Machine(admissions: ConnectionAdmissions(maximumConnections: 1, maximumConnectionsPerUser: 1, maximumPendingHandshakesPerUser: 1))
        #expect(idle.phase == .idle)
        guard case .none = idle.shutdownRequested(graceful: true) else {
            Issue.record("a server that never ran has nothing to shut down")
            return
        }
        #expect(idle.phase == .finished)
        #expect(idle.runCalled() == .failAlreadyRan)

        var failed = Machine(admissions: ConnectionAdmissions(maximumConnections: 1, maximumConnectionsPerUser: 1, maximumPendingHandshakesPerUser: 1))
        #expect(failed.runCalled() == .startListening)
        failed.listenFailed()
        #expect(failed.phase == .finished)
        #expect(failed.runCalled() == .failAlreadyRan)
    }

    @Test("a shutdown before the socket listens is remembered: listening then stops at once, with nothing to drain")
    func shutdownBeforeListening() throws {
        var machine = Machine(admissions: ConnectionAdmissions(maximumConnections: 10, maximumConnectionsPerUser: 10, maximumPendingHandshakesPerUser: 10))
        #expect(machine.runCalled() == .startListening)
        guard case .none = machine.shutdownRequested(graceful: true) else {
            Issue.record("nothing listens yet: nothing to do now")
            return
        }
        #expect(machine.phase == .starting)
        guard case .shutDown(let shutdown) = machine.listening("listener") else {
            Issue.record("listening after a shutdown request must shut down")
            return
        }
        #expect(shutdown.stopListening == "listener")
        #expect(shutdown.drained)
        #expect(!shutdown.armGracePeriodTimer)
        #expect(machine.phase == .finished)
        #expect(Self.accept(1, into: &machine) == .refuse(.shuttingDown))
    }

    @Test("a shutdown with no connection open stops listening and drains at once, without a grace period timer")
    func shutdownWhenIdle() throws {
        var machine = Self.running()
        let shutdown = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(shutdown.stopListening == "listener")
        #expect(shutdown.drained)
        #expect(!shutdown.armGracePeriodTimer)
        #expect(machine.phase == .finished)
    }

    @Test("graceful, then forced: going-away first, then the channels are closed, handler work cancelled, the timer cancelled")
    func gracefulThenForced() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        Self.open(2, into: &machine)

        let graceful = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(graceful.graceful)
        #expect(graceful.stopListening == "listener")
        #expect(graceful.tellGoingAway.sorted() == ["f1", "f2"])
        #expect(graceful.closeChannels.isEmpty)
        #expect(!graceful.cancelHandlerTasks)
        #expect(graceful.armGracePeriodTimer)
        #expect(!graceful.drained)
        #expect(machine.phase == .shuttingDown)
        #expect(machine.gracePeriodTimerArmed("timer") == .keep)
        #expect(Self.shutdown(machine.shutdownRequested(graceful: true)) == nil, "a second graceful request does nothing")
        #expect(Self.accept(3, into: &machine) == .refuse(.shuttingDown))

        let forced = try #require(Self.shutdown(machine.shutdownRequested(graceful: false)))
        #expect(!forced.graceful)
        #expect(forced.stopListening == nil, "stopped already")
        #expect(forced.tellGoingAway.isEmpty)
        #expect(forced.closeChannels.sorted() == ["c1", "c2"])
        #expect(forced.cancelHandlerTasks)
        #expect(forced.cancelGracePeriodTimer == "timer")
        #expect(!forced.armGracePeriodTimer)
        #expect(Self.shutdown(machine.shutdownRequested(graceful: false)) == nil, "a second forced request does nothing")
        #expect(Self.shutdown(machine.gracePeriodEnded()) == nil, "the cancelled timer firing anyway does nothing")

        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: true))
        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: true, drained: true))
        #expect(machine.phase == .finished)
    }

    @Test("a forced shutdown from running says going-away, closes every channel at once and cancels handler work")
    func forced() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        let forced = try #require(Self.shutdown(machine.shutdownRequested(graceful: false)))
        #expect(forced.closeChannels == ["c1"])
        #expect(forced.cancelHandlerTasks)
        #expect(!forced.armGracePeriodTimer)
        #expect(forced.tellGoingAway == ["f1"], "said before the close, as HTTP/2 sends GOAWAY before it closes")
        // A graceful request after a forced one changes nothing.
        #expect(Self.shutdown(machine.shutdownRequested(graceful: true)) == nil)
        #expect(machine.gracePeriodTimerArmed("late") == .cancel("late"))
    }

    @Test("the drain waits for every connection; the last close completes it and cancels the grace period timer")
    func drainWithConnectionsOpen() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        Self.open(2, into: &machine)
        // An admitted connection whose channel is still being set up counts too.
        #expect(Self.accept(3, into: &machine) == .serve)

        _ = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(machine.gracePeriodTimerArmed("timer") == .keep)
        #expect(machine.connectionCount == 3)
        // Connection 3 gets its channel during the grace period: kept, and told to go away once open.
        #expect(machine.channelInitialized(3, channel: "c3") == .keep)
        #expect(machine.connectionOpened(3, connection: "f3") == .goAway)

        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: true))
        #expect(machine.connectionClosed(3, now: Self.later) == .init(wasCounted: true))
        #expect(machine.phase == .shuttingDown)
        let last = machine.connectionClosed(1, now: Self.later)
        #expect(last == .init(wasCounted: true, drained: true, cancelGracePeriodTimer: "timer"))
        #expect(machine.phase == .finished)
        #expect(machine.connectionCount == 0)
    }

    @Test("a grace period timer reported armed after the drain completed is cancelled at once")
    func gracePeriodTimerArmedAfterDrain() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        let shutdown = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(shutdown.armGracePeriodTimer)
        // The last connection closes before the server, outside the lock, has reported its timer.
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: true, drained: true))
        #expect(machine.gracePeriodTimerArmed("timer") == .cancel("timer"))
        #expect(Self.shutdown(machine.gracePeriodEnded()) == nil)
    }

    @Test("the grace period's end forces the shutdown, with no timer left to cancel")
    func gracePeriodEnds() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        _ = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(machine.gracePeriodTimerArmed("timer") == .keep)
        #expect(machine.gracePeriodTimerArmed("second") == .cancel("second"), "one timer at a time")
        let forced = try #require(Self.shutdown(machine.gracePeriodEnded()))
        #expect(!forced.graceful)
        #expect(forced.closeChannels == ["c1"])
        #expect(forced.cancelHandlerTasks)
        #expect(forced.cancelGracePeriodTimer == nil, "it fired")
        // A channel set up after the channels were closed is closed too.
        #expect(machine.channelInitialized(9, channel: "c9") == .close)
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: true, drained: true))
    }

    @Test("parked connections are closed unserved when the shutdown begins, and no longer counted")
    func parkedOnShutdown() throws {
        var machine = Self.running(maximumPendingHandshakesPerUser: 1)
        Self.open(1, into: &machine)
        #expect(Self.accept(2, into: &machine) == .park)
        #expect(Self.accept(3, into: &machine) == .park)
        #expect(machine.connectionCount == 3)

        let shutdown = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(shutdown.closeParked.map(\.id).sorted() == [2, 3])
        #expect(shutdown.closeParked.map(\.descriptor).sorted() == [102, 103])
        #expect(machine.connectionCount == 1)
        #expect(machine.parkedHandshakeExpired(2) == .none, "closed already")
        #expect(machine.handshakeCompleted(1, now: Self.later) == .init(), "nothing is parked any more")
        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: false))
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: true, drained: true))
    }

    @Test("a parked connection is served when a handshake slot frees; those whose time ran out meanwhile are closed")
    func parkedHandOff() {
        var machine = Self.running(maximumPendingHandshakesPerUser: 1)
        let now = NIODeadline.uptimeNanoseconds(500)
        #expect(Self.accept(1, into: &machine) == .serve)
        #expect(Self.accept(2, deadline: .uptimeNanoseconds(100), into: &machine) == .park)
        #expect(Self.accept(3, deadline: .uptimeNanoseconds(500), into: &machine) == .park)
        #expect(Self.accept(4, deadline: .uptimeNanoseconds(900), into: &machine) == .park)
        #expect(Self.accept(5, user: 8, into: &machine) == .serve, "another user has slots of its own")

        let handOff = machine.handshakeCompleted(1, now: now)
        #expect(handOff.expired.map(\.id) == [2, 3], "a deadline at or before now has run out")
        #expect(handOff.serve?.id == 4)
        #expect(machine.connectionCount == 3)
        #expect(machine.parkedHandshakeExpired(4) == .none, "served now")

        // A connection still parked when its handshake time is up is handed back once, to be closed.
        #expect(Self.accept(6, deadline: .uptimeNanoseconds(900), into: &machine) == .park)
        guard case .closeUnserved(let parked) = machine.parkedHandshakeExpired(6) else {
            Issue.record("a parked connection whose time is up is closed")
            return
        }
        #expect(parked.id == 6)
        #expect(machine.parkedHandshakeExpired(6) == .none)
        #expect(machine.connectionCount == 3)

        // A close frees a handshake slot too.
        #expect(Self.accept(7, deadline: .uptimeNanoseconds(900), into: &machine) == .park)
        let closed = machine.connectionClosed(4, now: now)
        #expect(closed.wasCounted)
        #expect(closed.parked.serve?.id == 7)
    }

    @Test("a connection closed twice counts once, and a close after the drain does nothing")
    func closedTwice() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        Self.open(2, into: &machine)
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: true))
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: false))
        #expect(machine.connectionCount == 1)

        _ = try #require(Self.shutdown(machine.shutdownRequested(graceful: true)))
        #expect(machine.connectionClosed(1, now: Self.later) == .init(wasCounted: false), "no drain from a stale close")
        #expect(machine.phase == .shuttingDown)
        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: true, drained: true))
        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: false), "the drain completes once")
    }

    @Test("limits: in all and per user; a refused peer counts but never parks; limits are fitted before listening")
    func limits() {
        var machine = Machine(
            admissions: ConnectionAdmissions(maximumConnections: 3, maximumConnectionsPerUser: 2, maximumPendingHandshakesPerUser: 1)
        )
        #expect(machine.runCalled() == .startListening)
        #expect(machine.fitLimits(toHold: 10) == nil, "enough descriptors")
        guard case .serve = machine.listening("listener") else {
            Issue.record("a running machine did not serve")
            return
        }
        #expect(machine.fitLimits(toHold: 1) == nil, "only before listening")

        #expect(Self.accept(1, into: &machine) == .serve)
        let unauthorized = machine.connectionAccepted(
            2,
            descriptor: 102,
            peer: Self.peer(7),
            authorized: false,
            handshakeDeadline: Self.later
        )
        #expect(unauthorized == .refuseUnauthorized, "not parked although user 7 is at its pending-handshake limit")
        #expect(Self.accept(3, into: &machine) == .refuse(.limit(.maximumConnectionsPerUser)))
        #expect(Self.accept(4, user: 8, into: &machine) == .serve)
        #expect(Self.accept(5, user: 9, into: &machine) == .refuse(.limit(.maximumConnections)))
        #expect(machine.connectionCount == 3)
        #expect(machine.connectionClosed(2, now: Self.later) == .init(wasCounted: true))
        #expect(Self.accept(6, user: 9, into: &machine) == .serve)
        #expect("\(Machine.Refusal.shuttingDown)" == "the server is shutting down")
        #expect("\(Machine.Refusal.limit(.maximumConnections))" == "the server is at maximumConnections")

        var small = Machine(
            admissions: ConnectionAdmissions(maximumConnections: 100, maximumConnectionsPerUser: 80, maximumPendingHandshakesPerUser: 1)
        )
        #expect(small.runCalled() == .startListening)
        #expect(small.fitLimits(toHold: 10) == .init(maximumConnections: 10, maximumConnectionsPerUser: 5))
    }
}
