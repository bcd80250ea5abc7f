import NIOCore
import SocketIPCTestSupport
import Testing

@_spi(SocketIPCRuntime) import SocketIPCCore

// The state machine's part in the server's conveniences (the hooks as part of the drain, the established
// connections), with plain values. These belong beside SocketIPCCoreTests' ServerStateMachineTests.

/// The listener, channels, connections and timers are plain strings here.
private typealias Machine = ServerStateMachine<String, String, String, String>

@Suite("ServerStateMachine: shutdown hooks and established connections", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServerStateMachineShutdownHooksTests {
    private static let later = NIODeadline.uptimeNanoseconds(1_000_000)

    private static func running() -> Machine {
        var machine = Machine(
            admissions: ConnectionAdmissions(
                maximumConnections: 100,
                maximumConnectionsPerUser: 10,
                maximumPendingHandshakesPerUser: 10
            )
        )
        _ = machine.runCalled()
        _ = machine.listening("listener")
        return machine
    }

    /// Accepts connection `id`, authorized.
    private static func accept(_ id: UInt64, into machine: inout Machine) -> Machine.AcceptAction {
        let peer = PeerCredentials(processID: 1, userID: 7, groupID: 7)
        return machine.connectionAccepted(
            id,
            descriptor: Int32(id),
            peer: peer,
            authorized: true,
            handshakeDeadline: later
        )
    }

    /// Accepts and opens framed connection `id` (channel `c<id>`, connection `f<id>`); with `handshake`, its hello
    /// arrives too.
    private static func open(_ id: UInt64, handshake: Bool = true, into machine: inout Machine) {
        #expect(Self.accept(id, into: &machine) == .serve)
        #expect(machine.channelInitialized(id, channel: "c\(id)") == .keep)
        #expect(machine.connectionOpened(id, connection: "f\(id)") == .serve)
        if handshake { _ = machine.handshakeCompleted(id, now: .uptimeNanoseconds(0)) }
    }

    private static func shutdown(_ action: Machine.ShutdownAction) -> Machine.Shutdown? {
        guard case .shutDown(let shutdown) = action else { return nil }
        return shutdown
    }

    /// Asks `machine` for a shutdown with hooks to run.
    private static func shutDownWithHooks(graceful: Bool, _ machine: inout Machine) throws -> Machine.Shutdown {
        try #require(Self.shutdown(machine.shutdownRequested(graceful: graceful, runningShutdownHooks: true)))
    }

    @Test("established connections are those whose hello arrived, in id order, until they close")
    func establishedConnections() {
        var machine = Self.running()
        Self.open(2, into: &machine)
        Self.open(1, into: &machine)
        Self.open(3, handshake: false, into: &machine)
        #expect(machine.establishedConnections == ["f1", "f2"])
        _ = machine.handshakeCompleted(3, now: .uptimeNanoseconds(0))
        #expect(machine.establishedConnections == ["f1", "f2", "f3"])
        _ = machine.connectionClosed(2, now: .uptimeNanoseconds(0))
        #expect(machine.establishedConnections == ["f1", "f3"])
        _ = Self.shutdown(machine.shutdownRequested(graceful: true))
        #expect(machine.establishedConnections == ["f1", "f3"], "listed while they go away")
    }

    @Test("a graceful shutdown with hooks, forced before they end, tells the connections it is going away before it closes them (found by a review)")
    func forcedWhileHooksRun() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        let graceful = try Self.shutDownWithHooks(graceful: true, &machine)
        #expect(graceful.tellGoingAway.isEmpty, "held for the hooks")
        let forced = try #require(Self.shutdown(machine.shutdownRequested(graceful: false)))
        #expect(forced.tellGoingAway == ["f1"])
        #expect(forced.closeChannels == ["c1"])
    }

    @Test("a graceful shutdown with hooks tells the connections it is going away only once the hooks have ended")
    func gracefulHoldsTheGoingAway() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        let shutdown = try Self.shutDownWithHooks(graceful: true, &machine)
        #expect(shutdown.runShutdownHooks)
        #expect(shutdown.tellGoingAway.isEmpty)
        #expect(shutdown.armGracePeriodTimer)
        #expect(machine.gracePeriodTimerArmed("timer") == .keep)
        let finished = machine.shutdownHooksFinished()
        #expect(finished.tellGoingAway == ["f1"])
        #expect(!finished.drained)
        #expect(machine.phase == .shuttingDown)
        #expect(machine.shutdownHooksFinished().tellGoingAway.isEmpty, "only once")
        let closed = machine.connectionClosed(1, now: .uptimeNanoseconds(0))
        #expect(closed.drained)
        #expect(closed.cancelGracePeriodTimer == "timer")
    }

    @Test("the hooks are part of the drain: with no connection left, it completes when they end")
    func hooksArePartOfTheDrain() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        _ = try Self.shutDownWithHooks(graceful: true, &machine)
        #expect(!machine.connectionClosed(1, now: .uptimeNanoseconds(0)).drained, "the hooks still run")
        #expect(machine.phase == .shuttingDown)
        let finished = machine.shutdownHooksFinished()
        #expect(finished.drained)
        #expect(finished.tellGoingAway.isEmpty)
        #expect(machine.phase == .finished)

        var empty = Self.running()
        let shutdown = try Self.shutDownWithHooks(graceful: true, &empty)
        #expect(!shutdown.drained)
        #expect(empty.phase == .shuttingDown)
        #expect(empty.shutdownHooksFinished().drained)
    }

    @Test("a connection that opens while a graceful shutdown's hooks run is served and told afterwards")
    func openedWhileHooksRun() throws {
        var machine = Self.running()
        // Accepted before the shutdown, opened on its channel while the hooks run.
        #expect(Self.accept(1, into: &machine) == .serve)
        _ = try Self.shutDownWithHooks(graceful: true, &machine)
        #expect(machine.channelInitialized(1, channel: "c1") == .keep)
        #expect(machine.connectionOpened(1, connection: "f1") == .serve)
        #expect(machine.shutdownHooksFinished().tellGoingAway == ["f1"])
        #expect(machine.connectionOpened(2, connection: "f2") == .goAway, "after the hooks: told at once")
    }

    @Test("a forced shutdown with hooks closes the channels now, and drains once the hooks end")
    func forcedWithHooks() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        let shutdown = try Self.shutDownWithHooks(graceful: false, &machine)
        #expect(shutdown.runShutdownHooks)
        #expect(shutdown.closeChannels == ["c1"])
        #expect(shutdown.cancelHandlerTasks)
        #expect(!machine.connectionClosed(1, now: .uptimeNanoseconds(0)).drained)
        let finished = machine.shutdownHooksFinished()
        #expect(finished.tellGoingAway.isEmpty)
        #expect(finished.drained)
    }

    @Test("the grace period's end forces a shutdown whose hooks still run")
    func gracePeriodEndsWhileHooksRun() throws {
        var machine = Self.running()
        Self.open(1, into: &machine)
        _ = try Self.shutDownWithHooks(graceful: true, &machine)
        let forced = try #require(Self.shutdown(machine.gracePeriodEnded()))
        #expect(forced.closeChannels == ["c1"])
        #expect(forced.cancelHandlerTasks)
        #expect(machine.shutdownHooksFinished().tellGoingAway.isEmpty, "the connections were closed, not told")
        #expect(machine.connectionClosed(1, now: .uptimeNanoseconds(0)).drained)
    }
}
