import NIOCore
import SocketIPCCore
import Synchronization

/// One call on one side, with its frames' bytes: what the typed streams and the router read from and write to.
///
/// Its state is a ``CallStateMachine`` under a lock: messages received and not yet read, credit both ways, who
/// waits. It sends its own frames through the connection: messages (waiting for credit and for the socket), the
/// end, credit as the reader consumes, and (on the caller's side) a cancel.
final class CallStream: Sendable, WriteWaitOwner {
    /// What a read returns: the next message, or the peer's end with its status.
    enum Inbound: Sendable {
        /// A message, with the descriptors it brought (the reader owns them), if any.
        case message(ByteBuffer, descriptors: ReceivedDescriptors?)
        case end(CallStatus)
    }

    /// The call's state; its waiters are resumed exactly once, since the state machine hands each out once (it takes
    /// it out of its state), so unchecked continuations do (a checked one allocates a canary per wait).
    typealias Machine = CallStateMachine<UnsafeContinuation<Inbound, any Error>, UnsafeContinuation<Resumed, any Error>>

    /// What a producer waiting for credit is resumed with.
    enum Resumed: Sendable {
        /// Its message's cost is taken: send it.
        case send
        /// Strict credit: its message is parked (its cost is this many bytes): tell the peer, and go on.
        case parked(cost: Int)
        /// Strict credit: nothing is taken; ask again.
        case retry
    }

    let id: UInt32
    let method: String
    let connection: Connection
    /// The share of its event loop's time that a run of sends on credit may take (see ``runLength``).
    private let loopShare: EventLoopShare
    /// Whether this side opened the call.
    let isCaller: Bool
    /// On the handler's side: whether the handler writes a stream of responses (server or bidirectional streaming),
    /// which a server's graceful shutdown ends at once.
    let streamsResponses: Bool
    /// The call's state machine, and the descriptors of its messages, under one lock (taken once per message each
    /// way).
    private let state: Mutex<Locked>
    /// The handler's side: fires once when the call must stop (the caller cancelled, the deadline passed, the
    /// connection closed), or when the handler finished; see ``waitUntilStopped()``.
    private let stop = Mutex<Stop>(Stop())
    struct Locked {
        var machine = Machine()
        /// Messages and bytes sent on credit since the sender last waited for credit, or last gave its event loop
        /// a turn (``send(_:descriptors:)``).
        var sentInRun = 0
        var bytesInRun = 0
        /// The limits of the run in progress: ``CallStream/runLength`` and ``CallStream/runBytes``, shared with the
        /// other long runs on the event loop; set when a run starts.
        var runLimit = (messages: 0, bytes: 0)
        /// Messages read without waiting since the reader last waited or gave the other tasks a turn
        /// (``next()``, off the event loop).
        var readInRun = 0
        /// The descriptors of messages received and not yet read, by the messages' numbers: messages are read in
        /// the order they arrived, so the reader's count finds them.
        var descriptors = MessageDescriptors()
        /// Strict credit: the message parked until credit covers it (``CallStateMachine/SendAction/park(cost:)``),
        /// with its descriptors (closed if it never goes).
        var parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?
        /// Strict credit: this side's end, waiting for the parked message.
        var endAfterParked: CallStatus?
        /// Who waits until nothing is parked (``waitUntilParkedSent()``).
        var parkedWaiter: UnsafeContinuation<Void, Never>?
        /// The ids of the connection's waits for room that writers of this call are in (``WriteWaitOwner``).
        var writeWaitIDs: [UInt64] = []
        /// Sends of this call between taking their credit and queueing their message (waiting for room): an end
        /// (``finish(_:)``) waits for them, so that it never overtakes a message whose write returns success.
        var sendsInProgress = 0
        /// This side's end, waiting for the sends in progress.
        var endAfterSends: CallStatus?

        /// Forgets the parked message and the end that waited for it (the call failed, or its other side ended it);
        /// returns who waited for it to go.
        mutating func dropParked() -> UnsafeContinuation<Void, Never>? {
            self.parked = nil
            self.endAfterParked = nil
            return self.parkedWaiter.take()
        }
    }

    struct MessageDescriptors {
        /// Messages received, and read, so far.
        var received: UInt64 = 0
        var read: UInt64 = 0
        /// The descriptors of received messages not yet read, by message number, in order.
        var waiting: [(number: UInt64, descriptors: ReceivedDescriptors)] = []
        /// How many descriptors ``waiting`` holds.
        var held = 0

        /// Counts the next message as read (handed to the reader); returns the descriptors it brought, if any.
        @inline(__always)
        mutating func takeNext() -> ReceivedDescriptors? {
            self.read += 1
            guard let first = self.waiting.first, first.number == self.read else { return nil }
            self.waiting.removeFirst()
            self.held -= first.descriptors.count
            return first.descriptors
        }
    }

    struct Stop {
        var reason: StopReason?
        /// The task that runs the handler, while it runs it: cancelled when the call must stop. Set and cleared by
        /// that task itself (``runStoppable(_:)``).
        var handlerTask: HandlerTask?
        /// Cancels of ``handlerTask`` in progress (outside the lock, since a cancel runs the task's cancellation
        /// handlers, which may close the connection and so come back here): the task does not end before they do.
        var cancelsInProgress = 0
        /// The handler's task, waiting at its end for the cancels in progress.
        var endWaiter: UnsafeContinuation<Void, Never>?
    }

    /// The task that runs a handler, to cancel it from another thread; see ``Stop/handlerTask``.
    struct HandlerTask: @unchecked Sendable {
        let task: UnsafeCurrentTask
    }

    /// Why a handler's call stops before its handler is done.
    enum StopReason: Sendable, Equatable {
        /// The caller sent cancel with reason `0x00`.
        case cancelledByCaller
        /// The deadline passed (the caller's cancel with reason `0x01`, or this side's own clock).
        case deadlineExceeded
        /// The connection closed.
        case connectionClosed
        /// The server is shutting down, and the call's response stream ends now.
        case serverGoingAway
        /// The handler returned or threw: nothing to stop.
        case finished
        /// A peer without strict credit made the connection's calls hold more than they may beyond their windows, and
        /// this call's message tipped it over (``CallMultiplexer/checkHeldBeyondWindows(on:)``).
        case heldBeyondWindows
        /// The caller sent, or asked for credit for, a request of `size` bytes, above its method's `limit`
        /// (``ServiceMethod/maximumRequestSize``).
        case requestTooLarge(size: Int, limit: Int)
    }

    /// On the handler's side: the largest request message the method takes (``ServiceMethod/maximumRequestSize``,
    /// within the connection's maximum message size); `Int.max` on the caller's side.
    let maximumRequestSize: Int
    /// What a message of ``maximumRequestSize`` costs in credit (its frame's bytes); `Int.max` without a limit.
    private let maximumRequestCost: Int

    /// - Parameter maximumRequestSize: On the handler's side, the method's ``ServiceMethod/maximumRequestSize``.
    init(
        id: UInt32,
        method: String,
        connection: Connection,
        isCaller: Bool,
        streamsResponses: Bool = false,
        maximumRequestSize: Int? = nil
    ) {
        self.id = id
        self.method = method
        self.maximumRequestSize = maximumRequestSize.map { max($0, 0) } ?? .max
        self.maximumRequestCost = maximumRequestSize.map { Machine.frameCost(payloadLength: min(max($0, 0), Int(UInt32.max))) } ?? .max
        self.connection = connection
        self.loopShare = connection.eventLoopShare()
        self.isCaller = isCaller
        self.streamsResponses = streamsResponses
        self.state = Mutex(
            Locked(machine: Machine(strictCredit: connection.peerSendsWithinCredit, grantsWhileWriting: isCaller))
        )
    }

    // MARK: - Frames from the peer (on the event loop)

    /// Takes a frame of this call; returns a protocol violation, if it is one.
    func receive(_ frame: CallFrame, descriptors: ReceivedDescriptors? = nil) -> SocketIPCError? {
        switch frame {
        case .message(let message) where message.readableBytes > self.maximumRequestSize && self.takesMessages:
            // Above the method's own limit: the call ends and the message is dropped (its descriptors closed), not
            // the connection; the caller did not break the protocol, it does not know the limit.
            self.refuseTooLarge(size: message.readableBytes)
        case .message(let message):
            var credit = 0
            var tooMany = false
            var beyondWindow = false
            let limit = descriptors == nil ? 0 : self.connection.maximumDescriptorsHeld
            var delivered: ReceivedDescriptors?
            let action = self.state.withLock { state -> Machine.ReceiveAction in
                // Counted (and its descriptors kept) under the call's lock, before the reader can see the message,
                // and only if the call keeps it: a message dropped (after the peer's end, or a failure) takes its
                // descriptors with it (closed as `descriptors` is released).
                if state.machine.acceptsMessages {
                    state.descriptors.received += 1
                    if let descriptors {
                        state.descriptors.waiting.append((state.descriptors.received, descriptors))
                        state.descriptors.held += descriptors.count
                        tooMany = state.descriptors.held > limit
                    }
                }
                if tooMany { return .violation }
                let action = state.machine.messageReceived(message)
                switch action {
                case .deliver:
                    credit = state.machine.delivered(message)
                    delivered = state.descriptors.takeNext()
                case .none:
                    // Held beyond the call's window (a version 1 peer of calls sent it beyond its credit): counted
                    // across the connection's calls below.
                    beyondWindow = state.machine.heldBeyondWindow > 0
                case .end, .violation:
                    break
                }
                return action
            }
            if tooMany {
                return SocketIPCError(
                    .protocolViolation,
                    "the peer passed more than \(limit) descriptors on call \(self.id) that its reader has not taken"
                )
            }
            switch action {
            case .none, .end: break
            case .deliver(let waiter, let message):
                waiter.resume(returning: .message(message, descriptors: delivered))
            case .violation:
                return SocketIPCError(
                    .protocolViolation,
                    "the peer sent a message of call \(self.id) beyond the credit it was given"
                )
            }
            self.grant(credit)
            if beyondWindow, let exhausted = CallMultiplexer.of(self.connection).checkHeldBeyondWindows(on: self.connection) {
                self.refuseHeldBeyondWindows(exhausted)
            }
        case .end(let status):
            // A caller's end keeps only its code (see endReceived): its details would be held for the call's life.
            let fromCaller = !self.isCaller
            if case .end(let waiter, let status) = self.state.withLock({
                $0.machine.endReceived(status, fromCaller: fromCaller)
            }) {
                waiter.resume(returning: .end(status))
            }
            // On the caller's side the handler's end ends the whole call: what the caller still sends has no
            // reader, and no credit comes for it (gRPC: a client's sends fail once the server has sent its status).
            if self.isCaller {
                let method = self.method
                // A status that says why (the server going away, an unknown method) is the sends' error too, so that
                // a caller can tell "try the next server" from "this call is over".
                let because = status.error(codec: JSONCodec(), method: method) as? SocketIPCError
                var parkedWaiter: UnsafeContinuation<Void, Never>?
                let refused = self.state.withLock { state in
                    let refused = state.machine.refuseSends {
                        because
                            ?? SocketIPCError(
                                .invalidState,
                                "the call '\(method)' was ended by its handler (status \(status.code)) while this side was still sending"
                            )
                    }
                    // A parked message no longer goes: the handler has ended the call.
                    if refused != nil { parkedWaiter = state.dropParked() }
                    return refused
                }
                if let refused, let waiter = refused.waiter { waiter.resume(throwing: refused.error) }
                parkedWaiter?.resume()
            }
        case .blocked(let cost) where Int(cost) > self.maximumRequestCost && self.takesMessages:
            // Asked for credit for a request above the method's limit: refused before a byte of it is sent.
            self.refuseTooLarge(size: Int(cost) - Machine.frameCost(payloadLength: 0))
        case .blocked(let cost):
            let maximumCost = Machine.frameCost(payloadLength: self.connection.maximumMessageSize)
            switch self.state.withLock({ $0.machine.blockedReceived(cost: Int(cost), maximumCost: maximumCost) }) {
            case .none: break
            case .grant(let credit): self.grant(credit)
            case .violation:
                return SocketIPCError(
                    .protocolViolation,
                    "the peer is blocked on a message of call \(self.id) that costs \(cost) bytes of credit, more than "
                        + "a message of the maximum size (\(self.connection.maximumMessageSize) bytes) costs"
                )
            }
        case .credit(let increment):
            var parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?
            let action = self.state.withLock { locked in
                let action = locked.machine.creditReceived(increment)
                if case .sendParked = action { parked = locked.parked.take() }
                return action
            }
            switch action {
            case .none: break
            case .resume(let waiter): waiter.resume(returning: .send)
            case .retry(let waiter): waiter.resume(returning: .retry)
            case .sendParked: self.sendParked(parked)
            case .violation:
                return SocketIPCError(
                    .protocolViolation,
                    "the peer's credit for call \(self.id) would take its window above \(Machine.maximumWindow) bytes"
                )
            }
        case .cancel(let reason):
            guard !self.isCaller else { return nil }
            // The caller gave the call up, whether its deadline passed or its task was cancelled: the handler sees
            // which, and nothing more is sent for the call (PROTOCOL.md: after a cancel the handler's side sends
            // nothing), as the caller no longer listens.
            self.stopHandler(
                .cancelledByCaller,
                failing: reason == .deadlineExceeded ? Self.deadlineError(self.method) : CancellationError()
            )
        case .open:
            return SocketIPCError(.protocolViolation, "the peer opened call \(self.id), which is already open")
        }
        return nil
    }

    /// This call's message tipped the messages held beyond the connection's calls' windows over their bound: the
    /// call ends, and what it holds is dropped, not the connection. A handler's call ends with status
    /// `resourceExhausted` (`0x08`, as beyond the concurrency limit); a caller's is cancelled, and fails with `error`.
    private func refuseHeldBeyondWindows(_ error: SocketIPCError) {
        if self.isCaller {
            let wasOpen = self.state.withLock { $0.machine.failure == nil }
            self.fail(error)
            if wasOpen { self.connection.queueCallControlFrame(id: self.id, .cancel(.cancelled)) }
        } else {
            self.stopHandler(.heldBeyondWindows, failing: error)
        }
    }

    /// Whether a message arriving now would be taken: the call has not failed, the peer has not ended its direction,
    /// and the reader still reads (a unary handler reads one request). A message that would not is dropped as it
    /// arrives, whatever its size: only one that would be taken is held to ``maximumRequestSize`` (found by a
    /// review: a late second request above the limit ended a call whose handler had run, or had answered already).
    private var takesMessages: Bool {
        self.state.withLock { $0.machine.takesMessages }
    }

    /// Whether a message of `size` bytes, come as a shared payload, is worth mapping and copying: the call takes
    /// messages, and this one is within ``maximumRequestSize`` (one above it refuses the call now, as one through the
    /// socket would).
    func takesMessage(ofSize size: Int) -> Bool {
        guard self.takesMessages else { return false }
        guard size <= self.maximumRequestSize else {
            self.refuseTooLarge(size: size)
            return false
        }
        return true
    }

    /// The peer sent, or asked for credit for, a request of `size` bytes above ``maximumRequestSize``: the handler
    /// is stopped, and the call ends with status `invalidMessage`; what the call holds is dropped. Unless the call is
    /// stopping already (its handler finished, and its last message may wait for credit): the message is dropped.
    private func refuseTooLarge(size: Int) {
        let limit = self.maximumRequestSize
        self.stopHandler(
            .requestTooLarge(size: size, limit: limit),
            failing: SocketIPCError(.invalidMessage, Self.requestTooLargeText(size, limit, self.method)),
            unlessStopped: true
        )
    }

    /// Why a call was ended for a request above its method's limit.
    static func requestTooLargeText(_ size: Int, _ limit: Int, _ method: String) -> String {
        "a request of \(size) bytes is larger than '\(method)' takes (\(limit) bytes)"
    }

    // MARK: - Reading

    /// The next message, or the peer's end; waits for it.
    /// - Throws: What the call failed with (cancelled, deadline passed, connection closed); `CancellationError`
    ///   when the reading task is cancelled (on the caller's side that cancels the call, as the caller's own
    ///   cancellation does).
    nonisolated(nonsending) func next() async throws -> Inbound {
        // Most reads find their message already here (a stream in full flow, a unary call's request): take it
        // without suspending, but off the event loop give the executor's other tasks a turn now and then
        // (``offLoopRunLength``); on the loop, the buffer runs dry once the window is read, since only the loop refills it.
        if let (ready, endsRun) = try self.nextIfReceived(countingRun: !self.connection.isOnEventLoop) {
            if endsRun { await Task.yield() }
            return ready
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Inbound, any Error>) in
                var credit = 0
                var descriptors: ReceivedDescriptors?
                let action = self.state.withLock { state -> Machine.NextAction in
                    let action = state.machine.next(orWait: continuation)
                    switch action {
                    case .message(_, let grant):
                        credit = grant
                        descriptors = state.descriptors.takeNext()
                    case .wait(let grant):
                        // The peer is blocked on a message larger than its credit, which this reader now asks for.
                        credit = grant
                    case .end, .fail:
                        break
                    }
                    return action
                }
                switch action {
                case .message(let message, _): continuation.resume(returning: .message(message, descriptors: descriptors))
                case .end(let status): continuation.resume(returning: .end(status))
                case .fail(let error): continuation.resume(throwing: error)
                case .wait: break
                }
                self.grant(credit)
            }
        } onCancel: {
            self.cancel(.cancelled)
        }
    }

    /// The next message, or the peer's end, if it has arrived; `nil` if nothing has yet. Does not wait.
    /// - Throws: What the call failed with.
    func nextIfReceived() throws -> Inbound? {
        try self.nextIfReceived(countingRun: false)?.inbound
    }

    /// ``nextIfReceived()``, and with `countingRun`, whether this read ends a run of ``offLoopRunLength`` reads
    /// without waiting (the reader then yields).
    private func nextIfReceived(countingRun: Bool) throws -> (inbound: Inbound, endsRun: Bool)? {
        var credit = 0
        var endsRun = false
        let ready = self.state.withLock { state -> Result<Inbound, any Error>? in
            switch state.machine.poll() {
            case .message(let message, let grant):
                credit = grant
                if countingRun {
                    state.readInRun += 1
                    if state.readInRun >= Self.offLoopRunLength {
                        state.readInRun = 0
                        endsRun = true
                    }
                }
                return .success(.message(message, descriptors: state.descriptors.takeNext()))
            case .end(let status): return .success(.end(status))
            case .fail(let error): return .failure(error)
            case .wait:
                state.readInRun = 0
                return nil
            }
        }
        guard let ready else { return nil }
        self.grant(credit)
        return (try ready.get(), endsRun)
    }

    /// This side reads no more messages of the call (a unary or server-streaming handler has its request): those
    /// that come are dropped as they arrive, with their descriptors; returns whether one had already arrived, or the
    /// call failed meanwhile (a second request above the method's limit refused it): either way the handler must not
    /// run (found by a review: one refused that way still ran in its cancelled task, its side effect applied).
    func stopReceiving() -> Bool {
        self.state.withLock { state in
            let held = state.machine.stopReceiving()
            state.descriptors.waiting.removeAll()
            state.descriptors.held = 0
            return held || state.machine.failure != nil
        }
    }

    /// Gives `credit` bytes back to the peer, if any.
    private func grant(_ credit: Int) {
        guard credit > 0 else { return }
        self.connection.writeCallControlFrame(id: self.id, .credit(UInt32(clamping: credit)))
    }

    // MARK: - Writing

    /// What ``trySendWithoutWaiting(_:)`` did.
    enum SendAttempt {
        /// Queued. `longRun`: it ended a run of sends on credit, after which the sender gives its event loop a turn.
        case sent(longRun: Bool)
        /// Its credit is taken, but the write queue has no room: the sender waits for room, then queues it.
        case waitForRoom(longRun: Bool)
        /// No credit: nothing was taken or queued.
        case waitForCredit
    }

    /// Sends one message without descriptors if nothing has to wait (credit allows it and the write queue has
    /// room), without suspending: the path of a stream in full flow, which so makes no async call below the writer.
    /// A message parked for credit (strict credit) counts as sent. What is left to do otherwise is
    /// ``finishSend(_:after:)``'s.
    /// - Throws: What the call failed with; `messageTooLarge`; the connection's error once it is closed.
    func trySendWithoutWaiting(_ payload: ByteBuffer) throws -> SendAttempt {
        // Checked before the credit is taken: a message that never leaves must not take credit the peer never gives
        // back.
        try self.connection.checkCallMessageSize(payload)
        switch try self.takeCredit(for: payload, descriptors: nil) {
        case .none:
            return .waitForCredit
        case .parked(let cost):
            self.announceBlocked(cost: cost)
            return .sent(longRun: false)
        case .taken(let longRun):
            if try self.connection.queueCallMessageIfRoomNow(id: self.id, payload) { return .sent(longRun: longRun) }
            return .waitForRoom(longRun: longRun)
        }
    }

    /// Completes a send that ``trySendWithoutWaiting(_:)`` began: waits for room or credit as `attempt` says, and
    /// gives the event loop its turn after a long run.
    nonisolated(nonsending) func finishSend(_ payload: ByteBuffer, after attempt: SendAttempt) async throws {
        switch attempt {
        case .sent(let longRun):
            if longRun { await self.yieldTurn() }
        case .waitForRoom(let longRun):
            try await self.sendWhenRoom(payload, descriptors: nil)
            if longRun { await self.yieldTurn() }
        case .waitForCredit:
            try await self.send(payload)
        }
    }

    /// What ``takeCredit(for:descriptors:)`` did.
    enum CreditTaken {
        /// The message's cost is taken: send it. `longRun`: this send ended a long run of sends on credit.
        case taken(longRun: Bool)
        /// Strict credit: the message (and its descriptors) is parked until credit covers its cost.
        case parked(cost: Int)
        /// No credit: nothing was taken or kept.
        case none
    }

    /// Takes credit for `payload` if the call has it, counting the run of sends on credit, or parks it (strict
    /// credit, with `descriptors`).
    private func takeCredit(for payload: ByteBuffer, descriptors: DuplicatedDescriptors?) throws -> CreditTaken {
        let payloadLength = payload.readableBytes
        let onLoop = self.connection.isOnEventLoop
        var credit = 0
        defer { self.grant(credit) }
        return try self.state.withLock { locked -> CreditTaken in
            switch try locked.machine.trySend(payloadLength: payloadLength) {
            case .send:
                break
            case .park(let cost):
                locked.parked = (payload, descriptors)
                locked.sentInRun = 0
                locked.bytesInRun = 0
                credit = locked.machine.creditForBlockedPeerWhileWriting()
                return .parked(cost: cost)
            case .wait, .fail:
                locked.sentInRun = 0
                locked.bytesInRun = 0
                return .none
            }
            if locked.sentInRun == 0 {
                // A run starts: its share of the loop's time between two polls; off the loop, a task's turn among the
                // other tasks of the executor (``offLoopRunLength``).
                locked.runLimit =
                    onLoop
                    ? (self.loopShare.share(of: Self.runLength), self.loopShare.share(of: Self.runBytes))
                    : (Self.offLoopRunLength, Self.offLoopRunBytes)
            }
            locked.sentInRun += 1
            locked.bytesInRun += payloadLength
            // The loop's budget too: senders that each stay below their run (woken together by credit in drips)
            // must not add up to more than one run between two polls.
            let loopSpent = onLoop && self.loopShare.spend(bytes: payloadLength, budget: (Self.runLength, Self.runBytes))
            guard locked.sentInRun >= locked.runLimit.messages || locked.bytesInRun >= locked.runLimit.bytes
                || loopSpent
            else {
                return .taken(longRun: false)
            }
            locked.sentInRun = 0
            locked.bytesInRun = 0
            return .taken(longRun: true)
        }
    }

    /// Tells the peer that this side is blocked on the message it parked, which costs `cost` bytes of credit (strict
    /// credit): the peer gives credit beyond its window only when asked, once its reader waits. Queued after the
    /// message was parked, outside the call's lock; credit that came meanwhile sends the message only now, after the
    /// frame (the peer takes a call-blocked frame for the cost of the next message).
    private func announceBlocked(cost: Int) {
        self.connection.writeCallControlFrame(id: self.id, .blocked(UInt32(clamping: cost)))
        var parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?
        let covered = self.state.withLock { locked in
            guard locked.machine.parkedAnnounced() else { return false }
            parked = locked.parked.take()
            return true
        }
        if covered { self.sendParked(parked) }
    }

    /// Sends the message that was parked (credit now covers it), then this side's end if it waited for it, and
    /// resumes the producer waiting behind it.
    private func sendParked(_ parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?) {
        if let (payload, descriptors) = parked {
            // On the event loop, without waiting for room: the message was the producer's already, and goes as soon
            // as its credit came (the peer reads); a closed connection fails the call anyway.
            _ = try? self.connection.queueCallFrame(id: self.id, .message(payload), descriptors: descriptors?.take() ?? [])
        }
        var end: CallStatus?
        var parkedWaiter: UnsafeContinuation<Void, Never>?
        let after = self.state.withLock { locked in
            let after = locked.machine.parkedSent()
            if after.sendEnd { end = locked.endAfterParked }
            locked.endAfterParked = nil
            if !locked.machine.hasParkedMessage { parkedWaiter = locked.parkedWaiter.take() }
            return after
        }
        if let end { self.connection.writeCallControlFrame(id: self.id, .end(end)) }
        switch after.writer {
        case .resume(let waiter)?: waiter.resume(returning: .send)
        case .retry(let waiter)?: waiter.resume(returning: .retry)
        default: break
        }
        parkedWaiter?.resume()
    }

    /// Waits until no message of this side is parked for credit (strict credit): sent, or dropped as the call failed.
    /// A handler's call stays registered meanwhile, so that the credit that sends its last message still finds it.
    nonisolated(nonsending) func waitUntilParkedSent() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let now = self.state.withLock { locked -> Bool in
                guard locked.machine.hasParkedMessage, locked.machine.failure == nil else { return true }
                locked.parkedWaiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Sends one message: waits for credit, then for the socket (the connection's write queue). With strict credit a
    /// message that costs more than the credit there is is parked instead, and this returns (see
    /// ``CallStateMachine``).
    /// - Throws: What the call failed with; `messageTooLarge`; `CancellationError` if the task is cancelled.
    /// - Parameter descriptors: What the message carries, if anything; taken only once the message is queued.
    nonisolated(nonsending) func send(_ payload: ByteBuffer, descriptors: DuplicatedDescriptors? = nil) async throws {
        // Before the credit is taken, whatever the message carries: one that never leaves must not take credit.
        try self.connection.checkCallMessageSize(payload)
        // With credit, nothing to wait for: no suspension, but a turn for the event loop's other connections now and
        // then (below).
        var longRun = false
        switch try self.takeCredit(for: payload, descriptors: descriptors) {
        case .taken(let endsRun):
            longRun = endsRun
        case .parked(let cost):
            self.announceBlocked(cost: cost)
            return
        case .none:
            if case .parked(let cost) = try await self.waitForCredit(payload, descriptors: descriptors) {
                self.announceBlocked(cost: cost)
                return
            }
        }
        try await self.sendWhenRoom(payload, descriptors: descriptors)
        if longRun {
            // A handler on the event loop whose peer grants credit without limit and reads as fast as it is written
            // never waits, and would keep the loop from its other connections (their hellos, their calls) for as
            // long as it sends; so it gives the loop a turn at its sockets after each run.
            await self.yieldTurn()
        }
    }

    /// Waits until `payload`'s cost is taken (``Resumed/send``) or it is parked (``Resumed/parked(cost:)``).
    nonisolated(nonsending) private func waitForCredit(
        _ payload: ByteBuffer,
        descriptors: DuplicatedDescriptors?
    ) async throws -> Resumed {
        while true {
            let resumed = try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Resumed, any Error>) in
                    var credit = 0
                    let action = self.state.withLock { locked in
                        let action = locked.machine.reserveSend(payloadLength: payload.readableBytes, orWait: continuation)
                        if case .park = action { locked.parked = (payload, descriptors) }
                        // Held up by the peer's credit: a caller gives a blocked handler its credit now (see
                        // CallStateMachine.grantsWhileWriting).
                        credit = locked.machine.creditForBlockedPeerWhileWriting()
                        return action
                    }
                    self.grant(credit)
                    switch action {
                    case .send: continuation.resume(returning: .send)
                    case .park(let cost): continuation.resume(returning: .parked(cost: cost))
                    case .fail(let error): continuation.resume(throwing: error)
                    case .wait: break
                    }
                }
            } onCancel: {
                self.cancel(.cancelled)
            }
            if case .retry = resumed { continue }
            return resumed
        }
    }

    /// Messages sent on credit, without waiting, after which a sender on the event loop gives the loop a turn; divided
    /// among the senders that gave it a turn last time (``SocketIPCRuntime/EventLoopShare``), so that many streams on
    /// one loop send about this many between two polls in all.
    static var runLength: Int { 1024 }
    /// Bytes sent on credit, without waiting, after which a sender on the event loop gives the loop a turn: 4 MiB,
    /// divided as ``runLength`` is.
    static var runBytes: Int { 4 * 1024 * 1024 }
    /// Messages sent, or read, without waiting, after which a task off the event loop (a handler with
    /// `ServiceRouter.runsHandlersOnEventLoop` off, a caller's task) lets the executor's other tasks run
    /// (`Task.yield()`): 128, as Tokio's cooperative budget per task (`tokio::task::coop`). The global executor runs
    /// tasks in turn and never preempts one, so without it the streams of one peer that reads fast (or whose
    /// messages are all here) keep every other task, another user's call among them, waiting until their credit runs
    /// out: a peer that opened 1,000 streams held another user's call for 25 s (debug build; found by a review).
    static var offLoopRunLength: Int { 128 }
    /// Bytes sent without waiting after which a task off the event loop yields, as ``offLoopRunLength``: 512 KiB.
    static var offLoopRunBytes: Int { 512 * 1024 }

    /// Gives others their turn after a long run: on the connection's event loop, the loop's poll of its sockets
    /// (``SocketIPCRuntime/Connection/yieldToEventLoop()``); elsewhere, the executor's other tasks (`Task.yield()`).
    nonisolated(nonsending) private func yieldTurn() async {
        if self.connection.isOnEventLoop {
            await self.connection.yieldToEventLoop()
        } else {
            await Task.yield()
        }
    }

    /// Queues one message without waiting for the socket when credit allows it at once (the first message of a
    /// call always has it), so that a unary call's open, request and half-close leave in one write; otherwise
    /// waits as ``send(_:)``.
    nonisolated(nonsending) func sendWithoutWaiting(
        _ payload: ByteBuffer,
        descriptors: DuplicatedDescriptors? = nil
    ) async throws {
        // Before the credit is taken: a message that never leaves must not take it.
        try self.connection.checkCallMessageSize(payload)
        var credit = 0
        let action = try self.state.withLock { locked -> Machine.SendAction in
            let action = try locked.machine.trySend(payloadLength: payload.readableBytes)
            if case .park = action {
                locked.parked = (payload, descriptors)
                credit = locked.machine.creditForBlockedPeerWhileWriting()
            }
            return action
        }
        self.grant(credit)
        switch action {
        case .send:
            _ = try self.connection.queueCallFrame(id: self.id, .message(payload), descriptors: descriptors?.take() ?? [])
        case .park(let cost):
            self.announceBlocked(cost: cost)
        case .wait, .fail:
            try await self.send(payload, descriptors: descriptors)
        }
    }

    /// Ends this side's direction of the call with `status` (the caller's half-close is ``CallStatus/ok``); once.
    /// Behind a parked message, the end goes after it.
    func finish(_ status: CallStatus = .ok) {
        let sendNow = self.state.withLock { locked -> Bool in
            let action = locked.machine.endOutbound()
            if action == .afterParked { locked.endAfterParked = status }
            guard action == .send else { return false }
            // A send that took its credit and waits for room goes first (``sendWhenRoom(_:descriptors:)``).
            if locked.sendsInProgress > 0 {
                locked.endAfterSends = status
                return false
            }
            return true
        }
        guard sendNow else { return }
        self.connection.writeCallControlFrame(id: self.id, .end(status))
    }

    /// Ends the call from the handler's side after this side stopped it (its deadline, its server's shutdown), when
    /// the call has already failed locally: the caller still hears `status`; once.
    func finishAfterStop(_ status: CallStatus) {
        let action = self.state.withLock { locked in
            let action = locked.machine.endOutboundAfterStop()
            if action == .afterParked { locked.endAfterParked = status }
            return action
        }
        guard action == .send else { return }
        self.connection.writeCallControlFrame(id: self.id, .end(status))
    }

    // MARK: - Ending

    /// The caller gives the call up: tells the handler's side (a cancel frame) unless the call already ended, and
    /// fails what waits with `error`, by default `CancellationError` or `deadlineExceeded` as `reason` says.
    func cancel(_ reason: CallCancelReason, failing error: @autoclosure () -> (any Error)? = nil) {
        guard self.isCaller else {
            // The handler's own task was cancelled (its connection closed or its server's grace period ended).
            self.fail(CancellationError())
            return
        }
        let (wasOpen, isOver) = self.state.withLock { locked in
            let state = locked.machine
            return (
                state.failure == nil && !state.inboundEnded,
                state.failure != nil || (state.inboundEnded && state.outboundEnded && !state.hasWaiters)
            )
        }
        // Failed already, or ended both ways with nobody waiting (a call that completed): nothing to wake, nothing
        // to tell the peer. A writer that still waits for credit (one a body left running) is failed below.
        if isOver { return }
        let error: any Error =
            error() ?? (reason == .deadlineExceeded ? Self.deadlineError(self.method) : CancellationError())
        self.fail(error)
        if wasOpen { self.connection.queueCallControlFrame(id: self.id, .cancel(reason)) }
    }

    /// Fails the call with `error`: everything waiting and everything later throws it; reads first take the messages
    /// already received if `keepingReceived` (``CallStateMachine/fail(_:keepingReceived:)``).
    func fail(_ error: any Error, keepingReceived: Bool = false) {
        var parkedWaiter: UnsafeContinuation<Void, Never>?
        var writeWaits: [UInt64] = []
        let action = self.state.withLock { locked in
            let action = locked.machine.fail(error, keepingReceived: keepingReceived)
            // A parked message never goes now (its descriptors are closed as it is released).
            if locked.machine.failure != nil {
                parkedWaiter = locked.dropParked()
                writeWaits = locked.writeWaitIDs
                locked.writeWaitIDs = []
                locked.endAfterSends = nil
            }
            return action
        }
        action.readWaiter?.resume(throwing: error)
        action.writeWaiter?.resume(throwing: error)
        parkedWaiter?.resume()
        // A writer waiting for room in the connection's write queue (its peer reads nothing) ends too: the caller's
        // deadline or cancel must end it, not only the connection's close.
        for id in writeWaits { self.connection.cancelWriteWait(id: id) }
    }

    // MARK: - WriteWaitOwner

    func writeWaitBegan(id: UInt64) -> Bool {
        self.state.withLock { locked in
            guard locked.machine.failure == nil else { return false }
            locked.writeWaitIDs.append(id)
            return true
        }
    }

    func writeWaitEnded(id: UInt64) {
        self.state.withLock { locked in
            locked.writeWaitIDs.removeAll { $0 == id }
        }
    }

    /// Queues `payload`, whose credit is taken, once the connection's write queue has room; an end asked for
    /// meanwhile (``finish(_:)``) goes after it (found by a review: it overtook the message, which the peer then
    /// dropped although the write returned success).
    nonisolated(nonsending) private func sendWhenRoom(
        _ payload: ByteBuffer,
        descriptors: DuplicatedDescriptors?
    ) async throws {
        self.state.withLock { $0.sendsInProgress += 1 }
        do {
            if let descriptors {
                try await self.connection.sendCallFrame(
                    id: self.id,
                    .message(payload),
                    descriptors: descriptors.take(),
                    owner: self
                )
            } else {
                try await self.connection.sendCallMessage(id: self.id, payload, owner: self)
            }
        } catch is CancellationError where !Task.isCancelled {
            // The wait for room was ended by the call's failure (its deadline, the caller's cancel of the call, the
            // peer's end), not by a cancel of this task: the writer throws what the call failed with, as a wait for
            // credit does (found by a review: a deadline threw CancellationError here).
            self.sendEnded()
            throw self.state.withLock { $0.machine.failure } ?? CancellationError()
        } catch {
            self.sendEnded()
            throw error
        }
        self.sendEnded()
    }

    /// A send of ``sendWhenRoom(_:descriptors:)`` is over: the end that waited for the sends goes now, if it was the
    /// last.
    private func sendEnded() {
        let end = self.state.withLock { locked -> CallStatus? in
            locked.sendsInProgress -= 1
            guard locked.sendsInProgress == 0, locked.machine.failure == nil else { return nil }
            return locked.endAfterSends.take()
        }
        if let end { self.connection.writeCallControlFrame(id: self.id, .end(end)) }
    }

    /// Whether `error` is the refusal of this side's (the caller's) sends because the handler ended the call: the
    /// handler's end is then the call's outcome.
    func isRefusalByHandlerEnd(_ error: SocketIPCError) -> Bool {
        self.state.withLock { locked in
            guard locked.machine.inboundEnded, let refused = locked.machine.sendsRefusedError as? SocketIPCError
            else { return false }
            return refused.code == error.code && refused.message == error.message
        }
    }

    /// Bytes of messages held for the reader beyond the call's window (see ``CallStateMachine/heldBeyondWindow``).
    var heldBeyondWindow: Int { self.state.withLock { $0.machine.heldBeyondWindow } }

    /// Whether the call failed (cancelled, deadline passed, connection closed), and with what.
    var failure: (any Error)? { self.state.withLock { $0.machine.failure } }

    static func deadlineError(_ method: String) -> SocketIPCError {
        SocketIPCError(.deadlineExceeded, "the call '\(method)' did not complete before its deadline")
    }

    // MARK: - The handler's side: stopping

    /// Tells the handler's runner why the call must stop, then fails the call with `error` (what the handler's
    /// reads and writes throw from then on), if one is given, and cancels the handler's task unless the reason is
    /// ``StopReason/finished``; the first reason counts. With `unlessStopped`, does nothing at all once a reason is
    /// recorded (the call is ending anyway: its handler finished, it was cancelled).
    ///
    /// The reason is recorded before the call fails: a handler woken by the failure on another thread may end at
    /// once, and must find the reason then, or it would count as finished and send an end the caller no longer
    /// wants (PROTOCOL.md: after a caller's cancel the handler's side sends nothing more for the call).
    func stopHandler(_ reason: StopReason, failing error: (any Error)? = nil, unlessStopped: Bool = false) {
        var handlerFinished = false
        var alreadyStopped = false
        let task = self.stop.withLock { stop -> HandlerTask? in
            alreadyStopped = stop.reason != nil
            if unlessStopped && alreadyStopped { return nil }
            handlerFinished = stop.reason == .finished
            if stop.reason == nil { stop.reason = reason }
            guard reason != .finished, let task = stop.handlerTask else { return nil }
            stop.cancelsInProgress += 1
            return task
        }
        // A server's shutdown ends response streams whose handler still writes; one whose handler has returned has
        // written all it will, and its last message (parked for credit) and end still go (found by a review: they
        // were dropped, and the caller got connectionClosed).
        if handlerFinished, reason == .serverGoingAway { return }
        if unlessStopped && alreadyStopped { return }
        // Messages that arrived before the connection closed are still read: a stream the handler completed (its end
        // came before the close) or one cut off (its messages, then the error) loses none of them (found by a review:
        // a server stream read after its server's graceful shutdown came back empty, and reported a normal end).
        if let error { self.fail(error, keepingReceived: reason == .connectionClosed) }
        guard let task else { return }
        // The task is alive: it waits at its end for this cancel (see `runStoppable`).
        task.task.cancel()
        let waiter = self.stop.withLock { stop -> UnsafeContinuation<Void, Never>? in
            stop.cancelsInProgress -= 1
            guard stop.cancelsInProgress == 0 else { return nil }
            defer { stop.endWaiter = nil }
            return stop.endWaiter
        }
        waiter?.resume()
    }

    /// Why the call stopped, once it has.
    var stopReason: StopReason? { self.stop.withLock { $0.reason } }

    /// Runs `handler` in the current task, which ``stopHandler(_:)`` cancels when the call must stop (at once, if
    /// it already must); then records that the handler finished, if nothing stopped it first.
    ///
    /// The handler runs in its call's own task rather than in a child of it: a child would cost a task and a
    /// wake-up of the waiting parent on every call.
    nonisolated(nonsending) func runStoppable(_ handler: () async -> Void) async {
        let task = withUnsafeCurrentTask { $0.map(HandlerTask.init) }
        let stopNow = self.stop.withLock { stop -> Bool in
            stop.handlerTask = task
            if let reason = stop.reason, reason != .finished { return true }
            return false
        }
        if stopNow { task?.task.cancel() }
        await handler()
        // From here on no cancel starts; one in progress on another thread still uses the task: wait for it.
        let mustWait = self.stop.withLock { stop -> Bool in
            stop.handlerTask = nil
            if stop.reason == nil { stop.reason = .finished }
            return stop.cancelsInProgress > 0
        }
        guard mustWait else { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resumeNow = self.stop.withLock { stop -> Bool in
                if stop.cancelsInProgress == 0 { return true }
                stop.endWaiter = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
