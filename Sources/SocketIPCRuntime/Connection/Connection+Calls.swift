import NIOCore
import SocketIPCCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Calls (frames 0x06 to 0x0A) on a connection, for the services layer, and keepalive pings (0x0B, 0x0C). The calls'
// own state is the services layer's; the connection carries their frames, numbers them, and counts them so that a
// connection going away waits for them.
extension Connection {
    /// Why the connection closed, once it has; `nil` while it is open and after this side closed it (``close()``,
    /// ``abort()``).
    ///
    /// - `peerGoingAway` (with the peer's text): the peer shut down gracefully (going-away `0x00`), for example its
    ///   server stopped.
    /// - `connectionClosed`: the peer closed the connection without going away: it exited, crashed or was killed.
    /// - `peerNotResponding`: the peer did not answer a keepalive ping in time (``ConnectionOptions/keepaliveTimeout``).
    /// - `unauthorized`, `protocolViolation`, `messageTooLarge`, …: the connection failed, as the code says.
    ///
    /// ``ConnectionHandler/connectionDidClose(_:error:)`` on a client gets the same value.
    public var closeReason: SocketIPCError? {
        guard let error = self.closeError else { return nil }
        if let peerError = self.peerGoingAwayError { return peerError }
        if error.code == .connectionClosed, self.calls.closedLocally.load(ordering: .relaxed) { return nil }
        if error.code == .connectionClosed, error == .closed || Self.isResetByPeer(error.cause) {
            return SocketIPCError(
                .connectionClosed,
                "the peer closed the connection without going away: it exited, crashed or was killed"
            )
        }
        return error
    }

    /// Whether `cause` is the kernel's word for a peer that vanished with bytes unread: `ECONNRESET` or `EPIPE`.
    private static func isResetByPeer(_ cause: (any Error)?) -> Bool {
        guard let error = cause as? IOError else { return false }
        return error.errnoCode == ECONNRESET || error.errnoCode == EPIPE
    }

    /// Whether the peer's hello said it speaks calls (``HelloFlags/calls``): only then may calls be opened on it.
    package var peerSpeaksCalls: Bool {
        HelloFlags(rawValue: self.calls.peerFlags.load(ordering: .relaxed)).contains(.calls)
    }

    /// Whether both hellos set ``HelloFlags/strictCredit``: call messages then go only within credit both ways, and
    /// a sender that lacks credit for one says so with a call-blocked frame (PROTOCOL.md, "Flow control").
    package var peerSendsWithinCredit: Bool {
        HelloFlags(rawValue: self.calls.peerFlags.load(ordering: .relaxed)).contains([.calls, .strictCredit])
    }

    /// Whether this side connected (a client's connection).
    package var isInitiator: Bool { self.calls.isInitiator }

    /// Installs the receiver of the connection's call frames; call it from ``ConnectionHandler/connectionDidOpen(_:)``.
    package func setCallReceiver(_ receiver: any CallFrameReceiver) {
        self.calls.receiver.withLock { $0 = receiver }
    }

    /// Whether this side has used all the ids of its calls (2^31) or of its requests (2^32) on the connection: it then
    /// goes away at its next call or request, and new ones belong on a new connection (PROTOCOL.md, "Call ids").
    package var hasUsedAllIDs: Bool {
        self.calls.opened.load(ordering: .relaxed) >= 1 << 31 || self.requestIDs.load(ordering: .relaxed) >= 1 << 32
    }

    /// Opens a call: counts it (a connection going away waits for it) and numbers it.
    /// - Returns: The call's id.
    /// - Throws: ``SocketIPCError`` with code `unknownMethod` if the peer does not speak calls (a version 1 peer),
    ///   or the connection's error once it is closed or going away (`peerGoingAway`, `connectionClosed`). Once this
    ///   side has opened 2^31 calls on the connection, all the ids it has, it goes away (`0x00`: calls in progress
    ///   finish, then it closes) and new calls fail with `connectionClosed`, to be opened on a new connection, as an
    ///   HTTP/2 client does when its stream ids run out (RFC 9113, section 5.1.1).
    package func startOutgoingCall() throws -> UInt32 {
        guard self.peerSpeaksCalls else {
            throw SocketIPCError(
                .unknownMethod,
                "the peer does not speak calls (its hello did not set the calls flag): it serves no methods"
            )
        }
        guard let id = self.calls.nextCallID() else {
            self.goAway(.normal, message: "this side has opened all the calls a connection can number")
            throw SocketIPCError(
                .connectionClosed,
                "the connection has opened all the 2^31 calls this side can number (PROTOCOL.md, \"Call ids\"), and is "
                    + "going away: open the call on a new connection"
            )
        }
        switch self.state.withLock({ $0.outgoingCallStarted() }) {
        case .proceed: return id
        case .fail(let error): throw error
        }
    }

    /// Counts a call the peer opened; throws (the caller answers status `unavailable`) while going away.
    package func startIncomingCall() throws {
        if case .fail(let error) = self.state.withLock({ $0.incomingCallStarted() }) { throw error }
    }

    /// A call counted by ``startOutgoingCall()`` or ``startIncomingCall()`` is over.
    package func callEnded() {
        if self.state.withLock({ $0.callEnded() }) { self.closeAfterGoingAway() }
    }

    /// Queues the open frame of call `id`; returns where it starts in this side's byte stream, for
    /// ``neverSent(from:)``.
    /// - Throws: The connection's error once it is closed.
    package func queueCallOpen(id: UInt32, _ open: CallOpen) throws -> Int {
        var offset = 0
        let action = self.state.withLock { state in
            offset = state.nextOutboundOffset
            return state.enqueueCallControlFrame(id: id, .open(open), spareBuffer: { self.spareBuffer() })
        }
        _ = try Self.queued(action, on: self)
        return offset
    }

    /// Whether nothing this side queued from `offset` on (``queueCallOpen(id:_:)``'s result) reached the peer: the
    /// connection closed with it still queued, or the socket refused it for good (`EPIPE`, `ECONNRESET`). Then the
    /// peer cannot have seen that call: a client may make it again elsewhere, as gRPC retries transparently an RPC
    /// that never left the client. `false` while the connection is open, and when a byte of it may have left.
    package func neverSent(from offset: Int) -> Bool {
        self.state.withLock { $0.neverSent(from: offset) }
    }

    /// Queues a frame of call `id`; returns whether the sender should wait (``waitUntilWritable()``) before the next.
    /// - Throws: The connection's error once it is closed.
    package func queueCallFrame(id: UInt32, _ frame: CallFrame) throws -> Bool {
        try self.queueCallFrame(id: id, frame, descriptors: [])
    }

    /// Queues a frame of call `id`, a message with `descriptors` (owned by the connection from now on: duplicates,
    /// closed once sent or when this throws) announced by a descriptors frame right before it; returns whether the
    /// sender should wait before the next.
    /// - Throws: The connection's error once it is closed; `invalidState` for descriptors on a connection that does
    ///   not pass them.
    /// - Parameter reservation: The room taken for the descriptors (``duplicateForPassing(_:)``).
    package func queueCallFrame(
        id: UInt32,
        _ frame: CallFrame,
        descriptors group: [Int32],
        reservation: OutgoingDescriptorReservation? = nil
    ) throws -> Bool {
        guard case .message(let message) = frame else {
            guard group.isEmpty else { throw Self.descriptorsRefused(group) }
            // A control frame (open, end, cancel, credit) goes straight into the coalescing buffer.
            return try Self.queued(self.state.withLock {
                $0.enqueueCallControlFrame(id: id, frame, spareBuffer: { self.spareBuffer() })
            }, on: self)
        }
        if group.isEmpty { return try self.queueCallMessage(id: id, message) }
        guard let passing = self.descriptorPassing, self.passesDescriptors else { throw Self.descriptorsRefused(group) }
        do {
            try self.checkCallMessageSize(message)
        } catch {
            DescriptorRelay.closeAll(group)
            throw error
        }
        let relay = passing.relay
        var registered = false
        let action = self.state.withLock {
            $0.enqueue(
                .callMessage, id: id, payload: message, spareBuffer: { self.spareBuffer() }, passing: group.count,
                registerDescriptors: {
                    relay.registerOutgoing(group, reservation: reservation)
                    registered = true
                }
            )
        }
        if !registered { DescriptorRelay.closeAll(group) }
        return try Self.queued(action, on: self)
    }

    /// Closes `group` and returns the error for descriptors that cannot travel with a call frame here.
    private static func descriptorsRefused(_ group: [Int32]) -> SocketIPCError {
        DescriptorRelay.closeAll(group)
        return SocketIPCError(.invalidState, "descriptors cannot travel with this call frame on this connection")
    }

    /// Schedules the flush `action` asks for; returns whether the sender should wait before the next frame.
    /// - Throws: The connection's error once it is closed.
    private static func queued(_ action: StateMachine.EnqueueAction, on connection: Connection) throws -> Bool {
        switch action {
        case .fail(let error):
            throw error
        case .queued(let scheduleFlush, let mustWait):
            if scheduleFlush { connection.scheduleFlush() }
            return mustWait
        }
    }

    /// Queues a message of call `id` without descriptors (a call's most frequent frame, on the path of every stream
    /// element); returns whether the sender should wait (``waitUntilWritable()``) before the next.
    /// - Throws: `messageTooLarge`; the connection's error once it is closed.
    package func queueCallMessage(id: UInt32, _ message: ByteBuffer) throws -> Bool {
        try self.checkCallMessageSize(message)
        return try self.queueCheckedData(.callMessage, id: id, message)
    }

    /// Queues a message of call `id` without descriptors once the write queue has room: while the peer is not
    /// reading (the queue at or above its high watermark, or the channel not writable) it waits first, and queues
    /// nothing meanwhile.
    ///
    /// Waiting before queueing, not after, is what bounds a peer that opens many calls and reads nothing: each of
    /// its calls' handlers would otherwise queue one whole message beyond the watermark (up to the maximum message
    /// size each, so 100 calls times 16 MiB on one connection). Now the queue holds at most the watermark and one
    /// message, however many handlers send.
    /// - Throws: `messageTooLarge`; the connection's error once it is closed.
    /// - Parameter owner: What may end a wait for room before the task is cancelled (the call, at its deadline).
    nonisolated(nonsending) package func sendCallMessage(
        id: UInt32,
        _ message: ByteBuffer,
        owner: (any WriteWaitOwner)? = nil
    ) async throws {
        try self.checkCallMessageSize(message)
        while try !self.queueCallMessageIfRoom(id: id, message) {
            try await self.waitUntilWritable(owner: owner)
        }
    }

    /// Queues a message of call `id` without descriptors if the write queue has room now, as
    /// ``sendCallMessage(id:_:)`` does without waiting; returns whether it was queued (if not, nothing was).
    /// - Throws: `messageTooLarge`; the connection's error once it is closed.
    package func queueCallMessageIfRoomNow(id: UInt32, _ message: ByteBuffer) throws -> Bool {
        try self.checkCallMessageSize(message)
        return try self.queueCallMessageIfRoom(id: id, message)
    }

    /// Queues a message of call `id` whose size was checked if the write queue has room (below its high watermark,
    /// the channel writable), checked and queued under one lock; returns whether it was queued.
    private func queueCallMessageIfRoom(id: UInt32, _ message: ByteBuffer) throws -> Bool {
        if self.descriptorPassing != nil && message.readableBytes >= self.options.sharedPayloadThreshold {
            // A payload that may travel in shared memory (made before it is queued): checked first, then queued.
            switch self.state.withLock({ $0.checkWritable() }) {
            case .wait: return false
            case .fail(let error): throw error
            case .proceed: break
            }
            _ = try self.queueCheckedData(.callMessage, id: id, message)
            return true
        }
        let (action, flushEarly) = self.state.withLock { state -> (StateMachine.EnqueueAction?, Bool) in
            if case .wait = state.checkWritable() { return (nil, false) }
            return (
                state.enqueue(.callMessage, id: id, payload: message, spareBuffer: { self.spareBuffer() }),
                state.shouldFlushEarly(threshold: Self.earlyFlushThreshold)
            )
        }
        guard let action else { return false }
        _ = try self.queued(action, flushEarly: flushEarly)
        return true
    }

    /// Waits until the write queue has room (below its high watermark, the channel writable), looking again after
    /// each wake-up: all waiting senders are resumed together, and those that run after another one filled the
    /// queue again wait again.
    nonisolated(nonsending) private func waitForRoom(owner: (any WriteWaitOwner)?) async throws {
        while true {
            switch self.state.withLock({ $0.checkWritable() }) {
            case .proceed: return
            case .fail(let error): throw error
            case .wait: try await self.waitUntilWritable(owner: owner)
            }
        }
    }

    /// Queues a frame of call `id` and waits while the peer is not reading (the write queue above its high
    /// watermark).
    nonisolated(nonsending) package func sendCallFrame(id: UInt32, _ frame: CallFrame) async throws {
        if try self.queueCallFrame(id: id, frame) {
            try await self.waitUntilWritable()
        }
    }

    /// Queues a call message with `descriptors` (see ``queueCallFrame(id:_:descriptors:)``) once the write queue has
    /// room, as ``sendCallMessage(id:_:)`` does, and waits while the peer is not reading.
    nonisolated(nonsending) package func sendCallFrame(
        id: UInt32,
        _ frame: CallFrame,
        descriptors: [Int32],
        reservation: OutgoingDescriptorReservation? = nil,
        owner: (any WriteWaitOwner)? = nil
    ) async throws {
        do {
            try await self.waitForRoom(owner: owner)
        } catch {
            DescriptorRelay.closeAll(descriptors)
            throw error
        }
        if try self.queueCallFrame(id: id, frame, descriptors: descriptors, reservation: reservation) {
            try await self.waitUntilWritable(owner: owner)
        }
    }

    /// Queues a frame of call `id` and does not wait: for the frames that end or steer a call (end, cancel, credit),
    /// which must not wait behind the peer's reading. Does nothing once the connection is closed.
    package func queueCallControlFrame(id: UInt32, _ frame: CallFrame) {
        _ = try? self.queueCallFrame(id: id, frame)
    }

    /// Queues a frame that ends or steers call `id` (credit, end) and, on the event loop, writes it at once unless a
    /// read batch is in progress (whose end flushes anyway): a reader that consumes a burst of messages in one go
    /// would otherwise hold its credit back until it yields, its producer idle meanwhile; a handler's end would wait
    /// for its task to be torn down, and a caller's half-close for the caller to suspend. Does nothing once the
    /// connection is closed.
    package func writeCallControlFrame(id: UInt32, _ frame: CallFrame) {
        guard (try? self.queueCallFrame(id: id, frame)) != nil else { return }
        if self.eventLoop.inEventLoop, self.state.withLock({ $0.shouldFlushEarly(threshold: 1) }) {
            self.flushPendingWrites()
        }
    }

    /// The largest message a call may carry: the connection's maximum.
    package var maximumMessageSize: Int { self.options.effectiveMaximumMessageSize }

    package func checkCallMessageSize(_ message: ByteBuffer) throws {
        guard message.readableBytes <= self.options.effectiveMaximumMessageSize else {
            throw SocketIPCError(
                .messageTooLarge,
                "the call's message of \(message.readableBytes) bytes exceeds the maximum of "
                    + "\(self.options.effectiveMaximumMessageSize) bytes (ConnectionOptions.maximumMessageSize)"
            )
        }
    }

    // MARK: - From the channel handler

    /// The peer's hello arrived with `flags`.
    func peerHelloReceived(flags: HelloFlags) {
        self.calls.peerFlags.store(flags.rawValue, ordering: .relaxed)
    }

    /// The peer cancels call `id` (before the cancel is handed on): counts it against the peer's ``CancelAllowance``s
    /// (the connection's, and on a server its user's) if the peer opened that call and the cancel stops its handler
    /// (``CallFrameReceiver/cancelStopsHandler(id:)``).
    /// - Returns: `nil`, or how long to read none of the peer's frames, once it owes a whole burst of cancels to either.
    func cancelReceived(id: UInt32) -> Duration? {
        guard self.calls.isPeerCallID(id), let receiver = self.calls.receiver.withLock({ $0 }),
            receiver.cancelStopsHandler(id: id)
        else { return nil }
        let now = self.calls.cancelClockNow()
        let own = self.calls.cancels.withLock { $0.spend(at: now) }
        guard let user = self.calls.userCalls?.spend(at: now) else { return own }
        return max(own ?? .zero, user)
    }

    /// Why the peer may not open a call now, as far as its cancels go (``CancelAllowance``), or `nil` if it may;
    /// counts a refusal.
    package func callOpenRefusal() -> String? {
        let calls = self.calls
        if !calls.cancels.withLock({ $0.allowsOpen(at: calls.cancelClockNow()) }) {
            calls.opensRefusedForCancels.add(1, ordering: .relaxed)
            return Self.connectionCancelsRefusal
        }
        if let user = calls.userCalls, !user.allowsOpen() {
            calls.opensRefusedForCancels.add(1, ordering: .relaxed)
            return Self.userCancelsRefusal
        }
        return nil
    }

    /// Counts a call the peer opened against its user's calls in progress across its connections (a server's
    /// connection; a client's counts none), unless `limit` are already.
    /// - Returns: Whether the call may start; if so, ``userCallEnded()`` gives it back once its handler has ended.
    package func beginUserCall(limit: Int) -> Bool {
        self.calls.userCalls?.beginCall(limit: limit) ?? true
    }

    /// A call counted by ``beginUserCall(limit:)`` is over.
    package func userCallEnded() {
        self.calls.userCalls?.endCall()
    }

    /// The message of a call refused for its connection's cancels (made once: a peer may cause it at any rate).
    static let connectionCancelsRefusal =
        "the peer cancels its calls faster than this side allows (\(CancelAllowance.perConnection)): no new call for now"
    /// The message of a call refused for its user's cancels across its connections.
    static let userCancelsRefusal =
        "the peer's user cancels its calls faster than this side allows across its connections "
        + "(\(CancelAllowance.perUser)): no new call for now"

    /// The clock the connection's cancel allowances read (tests set it by hand), if it is a server's connection.
    package var cancelClock: CancelClock? { self.calls.userCalls?.clock }

    /// How many of the peer's calls were refused because it cancelled its calls faster than ``CancelAllowance``
    /// allows.
    package var opensRefusedForCancels: Int { self.calls.opensRefusedForCancels.load(ordering: .relaxed) }

    /// A call frame arrived: to the services layer's receiver, or answered as an unknown method without one.
    @inline(never)
    /// Whether a call message of `length` bytes for call `id`, come as a shared payload, is worth mapping and copying
    /// (``CallFrameReceiver/takesSharedMessage(id:length:on:)``); `false` without a receiver, which drops call frames.
    func callTakesSharedMessage(id: UInt32, length: Int) -> Bool {
        guard let receiver = self.calls.receiver.withLock({ $0 }) else { return false }
        return receiver.takesSharedMessage(id: id, length: length, on: self)
    }

    func callFrameReceived(_ frame: CallFrame, id: UInt32, descriptors: ReceivedDescriptors? = nil) -> SocketIPCError? {
        if case .open = frame {
            if !self.calls.isPeerCallID(id) {
                return SocketIPCError(
                    .protocolViolation,
                    "the peer opened call \(id), an id of this side's numbering (the connecting side's calls are odd)"
                )
            }
            // Every open is answered (at the least by an end frame); see ``answerOwed()``.
            if let flood = self.answerOwed() { return flood }
        }
        if let receiver = self.calls.receiver.withLock({ $0 }) {
            if let descriptors { return receiver.receive(frame, id: id, descriptors: descriptors, on: self) }
            return receiver.receive(frame, id: id, on: self)
        }
        if case .open(let open) = frame {
            let status = CallStatus(code: .unknownMethod, message: "this peer serves no methods (asked for '\(open.method)')")
            self.queueCallControlFrame(id: id, .end(status))
        }
        return nil
    }

    /// Tells the services layer's receiver that this side is going away.
    func callsGoingAway() {
        if let receiver = self.calls.receiver.withLock({ $0 }) {
            receiver.connectionGoingAway(self)
        }
    }

    /// Tells the services layer's receiver that the connection closed.
    func callsClosed(error: SocketIPCError) {
        if let receiver = self.calls.receiver.withLock({ $0 }) {
            receiver.connectionClosed(self, error: error)
        }
    }
}

extension Connection {
    /// Runs `job` where ``Reply/complete(_:)`` runs its work: on a server, a child task of the task that runs
    /// ``Server/run()`` (so that `run()` waits for it); on a client, the connection's own task. Cancelled when the
    /// connection closes.
    /// - Parameter onEventLoop: Whether the job's task prefers the connection's event loop as its executor (no
    ///   thread hop between the I/O and the job, but a job that blocks stalls the loop), or the global executor.
    package func runHandlerJob(onEventLoop: Bool, _ job: @escaping @Sendable () async -> Void) {
        self.handlerTasks.get().run(job, on: onEventLoop ? self.taskExecutor : nil)
    }
}

extension Connection {
    /// The receiver of the connection's call frames, installing the one `make` returns if there is none yet.
    package func callReceiver(orInstall make: () -> any CallFrameReceiver) -> any CallFrameReceiver {
        self.calls.receiver.withLock { receiver in
            if let existing = receiver { return existing }
            let made = make()
            receiver = made
            return made
        }
    }

    /// When the calling task runs on the connection's event loop, suspends it until the loop has polled its sockets
    /// once (``EventLoopTurn``); elsewhere returns at once.
    nonisolated(nonsending) package func yieldToEventLoop() async {
        guard self.eventLoop.inEventLoop else { return }
        await self.taskExecutor.turn.wait()
    }

    /// Whether the calling code runs on the connection's event loop.
    package var isOnEventLoop: Bool { self.eventLoop.inEventLoop }

    /// The share of the event loop's time that a long run of sends on this connection's loop may take between two
    /// of the loop's polls (see ``yieldToEventLoop()``).
    package func eventLoopShare() -> EventLoopShare {
        EventLoopShare(turn: self.taskExecutor.turn)
    }

    /// Runs `body` on the connection's event loop after `delay`, unless the returned task is cancelled first: a
    /// call's deadline.
    package func scheduleCallTimer(in delay: Duration, _ body: @escaping @Sendable () -> Void) -> Scheduled<Void> {
        self.eventLoop.scheduleTask(in: .init(delay), body)
    }
}

/// The share of an event loop's time between two polls that one of the tasks giving the loop its turn
/// (``Connection/yieldToEventLoop()``) may take: a run of work that would take the whole time between two polls
/// alone is divided by the number of tasks that waited for the last poll, so that many such tasks on one loop (many
/// streams whose peers read as fast as they are written) keep the loop's other connections waiting no longer than
/// one would.
package struct EventLoopShare: Sendable {
    fileprivate let turn: EventLoopTurn

    /// `run` (a number of messages, or of bytes) divided among the tasks that share the loop; at least 1.
    @inline(__always)
    package func share(of run: Int) -> Int {
        max(1, run / self.turn.sharers)
    }

    /// Counts a message of `bytes` sent on the loop; whether the messages sent on it since its last poll, by every
    /// sender, have used up `budget` (one run: a number of messages, and of bytes).
    @inline(__always)
    package func spend(bytes: Int, budget: (messages: Int, bytes: Int)) -> Bool {
        self.turn.spend(bytes: bytes, budget: budget)
    }
}
