import NIOCore
import SocketIPCCore
import Synchronization

// Writing a call's messages within its credit and the connection's room, and its end.
extension CallStream {
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
            switch try locked.machine.trySend(payloadLength: payloadLength, descriptors: descriptors?.count ?? 0) {
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
    func sendParked(_ parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?) {
        if let (payload, descriptors) = parked {
            // On the event loop, without waiting for room: the message was the producer's already, and goes as soon
            // as its credit came (the peer reads); a closed connection fails the call anyway.
            _ = try? self.connection.queueCallFrame(
                id: self.id, .message(payload), descriptors: descriptors?.take() ?? [], reservation: descriptors?.reservation
            )
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
                        let action = locked.machine.reserveSend(
                            payloadLength: payload.readableBytes,
                            descriptors: descriptors?.count ?? 0,
                            orWait: continuation
                        )
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
            let action = try locked.machine.trySend(payloadLength: payload.readableBytes, descriptors: descriptors?.count ?? 0)
            if case .park = action {
                locked.parked = (payload, descriptors)
                credit = locked.machine.creditForBlockedPeerWhileWriting()
            }
            return action
        }
        self.grant(credit)
        switch action {
        case .send:
            _ = try self.connection.queueCallFrame(
                id: self.id, .message(payload), descriptors: descriptors?.take() ?? [], reservation: descriptors?.reservation
            )
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
}
