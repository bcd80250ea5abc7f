import NIOCore

/// One call's state on one side, as a value without I/O: the messages received and not yet consumed, the credit
/// each direction has (flow control), who waits to read or to write, and how the call ended.
///
/// Flow control is credit-based, as HTTP/2's (RFC 9113, section 6.9), counted in bytes of call-message frames as
/// they travel (``frameCost(payloadLength:)``: the 9 bytes of header and the payload). Each direction of a call starts
/// with ``initialWindow`` bytes of credit. The receiver gives credit back with a credit frame as its application
/// consumes messages, once a quarter of the window is consumed (``grantThreshold``), so a consumer that stops reading
/// stops its producer on the
/// other side.
///
/// How far a sender may go depends on ``strictCredit`` (both hellos set ``HelloFlags/strictCredit``):
/// - **Strict**: a message above half the window goes only when its whole cost is within the credit; one that costs
///   more is parked (CallStateMachine+Parked) and the sender says so with a call-blocked frame (`0x0F`, as QUIC's `STREAM_DATA_BLOCKED`, RFC 9000, section
///   19.13) carrying the cost; the receiver gives the credit it lacks once its application waits for a message and
///   has none (``blockedReceived(cost:maximumCost:)``, ``next(orWait:)``). A smaller message goes while the credit
///   is above zero, as with version 1's rule. So a receiver holds at most a window and a half per call whose reader
///   is busy, and a message larger than that only for a reader that asked for it, as gRPC widens a stream's window
///   for the message its application is reading.
/// - **Version 1 of calls**: a message goes while the credit is above zero, and its cost may take the credit below
///   zero, so that a message larger than the window still goes: a receiver holds up to one window and one message
///   per call.
///
/// ```
///            messageReceived / endReceived          next(...)
///   peer  --------------------------------->  [ inbound queue ]  ----------> consumer
///   peer  <---------------------------------  credit frame, once a quarter of the window is consumed
///
///   producer --reserveSend--> (credit > 0 ? send : wait) --creditReceived--> resumes the producer
/// ```
///
/// - `ReadWaiter`: what waits for the next inbound message (the runtime's continuation).
/// - `WriteWaiter`: what waits for credit.
@usableFromInline
package struct CallStateMachine<ReadWaiter, WriteWaiter> {
    /// Bytes of credit each direction of a call starts with: 64 KiB.
    @inlinable
    package static var initialWindow: Int { 65_536 }

    /// Bytes consumed after which the receiver gives them back as credit: a quarter of the window, 16 KiB. With half
    /// the window a sender of small messages within strict credit waited for credit at 95 % of the grants, and a
    /// typed stream of 64-byte events ran 25 % slower than with a quarter (BENCHMARKS.md, "What strict credit
    /// costs"); a credit frame is 13 bytes.
    @inlinable
    package static var grantThreshold: Int { initialWindow / 4 }

    /// What a call-message frame of `payloadLength` bytes costs in credit: its bytes on the wire.
    @inlinable
    package static func frameCost(payloadLength: Int) -> Int { 9 + payloadLength }

    /// Bytes of credit each descriptor a call message carries costs when both hellos set
    /// ``HelloFlags/descriptorCredit``: 1,024. So a window of 64 KiB holds at most 64 descriptors sent on credit (96
    /// with strict credit's half window beyond it), as the bytes of a window bound what a receiver holds.
    @inlinable
    package static var descriptorCost: Int { 1024 }

    /// What a call message of `payloadLength` bytes with `descriptors` descriptors costs in credit on this call: its
    /// frame's bytes, and ``descriptorCost`` per descriptor when ``chargesDescriptors``.
    @inlinable
    package func cost(payloadLength: Int, descriptors: Int) -> Int {
        Self.frameCost(payloadLength: payloadLength) + (self.chargesDescriptors ? descriptors * Self.descriptorCost : 0)
    }

    /// The most descriptors a receiver can be made to hold for a call's reader by a sender within credit, when
    /// descriptors cost credit: a window and a half of them (strict credit's rule: small messages go while the
    /// credit is above zero), or a window and one message of the most descriptors a message carries
    /// (`maximumPerMessage`, version 1's rule; or the one message a waiting reader asked for).
    @inlinable
    package static func descriptorsHeldWithinCredit(maximumPerMessage: Int) -> Int {
        (initialWindow + initialWindow / 2) / descriptorCost + maximumPerMessage
    }

    /// The messages received and not yet consumed.
    @usableFromInline
    var inbound = InboundMessages()
    /// Whether both sides send within credit (``HelloFlags/strictCredit``): a message then never costs more than its
    /// sender's credit, and a sender that lacks credit for one says so (``CallFrame/blocked(_:)``).
    @usableFromInline
    package var strictCredit = false
    /// Whether a call message's descriptors cost credit (both hellos set ``HelloFlags/descriptorCredit``):
    /// ``descriptorCost`` each.
    @usableFromInline
    package var chargesDescriptors = false
    /// The cost of the message the peer is blocked on (its call-blocked frame), while the credit the peer has, as
    /// this side counts it, is less: given once this side's reader waits with nothing to read.
    @usableFromInline
    var peerBlockedCost: Int?
    /// The cost of the message this side gave credit beyond its window for (``creditForBlockedPeer()``): the peer's
    /// next message must be that one, so that the credit serves the message a reader asked for and nothing else.
    @usableFromInline
    package internal(set) var grantedBlockedCost: Int?
    /// Credit given beyond the window for blocked messages and not yet consumed: the message it paid for is not given
    /// back as it is consumed, so that the window stays what it was (otherwise one 16 MiB message would widen the
    /// call's window to 16 MiB for good).
    @usableFromInline
    var creditBeyondWindow = 0

    /// How the peer ended its direction (its half-close, or the handler's final status), once it has.
    @usableFromInline
    var inboundEnd: CallStatus?
    /// What the peer may still send, as this side counts it: a message that arrives when it is not above zero
    /// breaks the protocol.
    @usableFromInline
    var peerCredit = CallStateMachine.initialWindow
    /// Bytes consumed since this side last gave credit back.
    @usableFromInline
    var consumedSinceGrant = 0
    /// Whether this side takes no more messages (a unary or server-streaming handler has its one request): those
    /// that come are counted against the peer's credit and dropped, not kept for a reader that will never come.
    @usableFromInline
    var receivingStopped = false
    /// Who waits for the next inbound message.
    @usableFromInline
    var readWaiter: ReadWaiter?

    /// What this side may still send.
    @usableFromInline
    var sendCredit = CallStateMachine.initialWindow
    /// Strict credit: the cost of the message accepted from the producer that waits for credit to cover it
    /// (``SendAction/park(cost:)``); the caller keeps the message itself.
    @usableFromInline
    var parkedCost: Int?
    /// Strict credit: the parked message's cost is taken and the caller is sending it (``CreditAction/sendParked``).
    @usableFromInline
    var sendingParked = false
    /// Strict credit: this side's end waits for the parked message.
    @usableFromInline
    var endAfterParked = false
    /// Strict credit: the call-blocked frame for the parked message is queued (``parkedAnnounced()``): only then may
    /// credit send the message, so that the peer never reads the frame after the message it announces.
    @usableFromInline
    var parkedIsAnnounced = false
    /// Who waits for credit, and the cost of the message it will send once resumed.
    @usableFromInline
    var writeWaiter: (waiter: WriteWaiter, cost: Int)?
    /// Whether this side ended its direction (sent its end frame).
    @usableFromInline
    package internal(set) var outboundEnded = false
    /// Why sends fail from now on although the call did not fail: on the caller's side, the handler ended the call
    /// while the caller still sent (no credit comes any more).
    @usableFromInline
    var sendsRefused: (any Error)?

    /// Why the call ended abruptly (cancelled, its connection closed), once it has: everything waiting or new fails
    /// with it.
    @usableFromInline
    package internal(set) var failure: (any Error)?

    /// Whether a blocked peer also gets its credit while this side's own producer is held up by credit (waiting, or
    /// its message parked) with nothing to read: the caller's side. A handler that ended its call behind a parked
    /// last message waits for the caller's reader, and a caller that writes before it reads would wait for the
    /// handler's credit, which its ended handler never gives: the handler's message comes, then its end, which fails
    /// the caller's writes, as with version 1's credit (found by a review: such a call hung until its deadline). The
    /// handler's side gives such credit only to a reader, so that a peer cannot make a server hold more than one
    /// window per call by leaving it blocked.
    @usableFromInline
    package var grantsWhileWriting = false

    /// - Parameters:
    ///   - strictCredit: Whether both sides send within credit (``HelloFlags/strictCredit``).
    ///   - grantsWhileWriting: ``grantsWhileWriting``: whether this is the caller's side.
    ///   - chargesDescriptors: ``chargesDescriptors``: whether descriptors cost credit.
    @inlinable
    package init(strictCredit: Bool = false, grantsWhileWriting: Bool = false, chargesDescriptors: Bool = false) {
        self.strictCredit = strictCredit
        self.grantsWhileWriting = grantsWhileWriting
        self.chargesDescriptors = chargesDescriptors
    }

    // MARK: - Inbound

    /// What to do with a received message or end.
    @usableFromInline
    package enum ReceiveAction {
        /// Nothing now: it is kept for the consumer (or the call is over and it is dropped).
        case none
        /// Resume the waiting consumer with this message.
        case deliver(ReadWaiter, ByteBuffer)
        /// Resume the waiting consumer with the end.
        case end(ReadWaiter, CallStatus)
        /// The peer sent beyond its credit: a protocol violation.
        case violation
    }

    /// Whether a message that costs `cost` bytes may arrive now: the credit left is above zero, and with strict
    /// credit covers all of a message above half the window (``parksMessage(cost:)``; a smaller one may take the
    /// credit below zero, as with version 1's rule).
    @inlinable
    func peerMaySend(cost: Int) -> Bool {
        self.peerCredit > 0 && (!self.strictCredit || cost <= self.peerCredit || !Self.parksMessage(cost: cost))
    }

    /// Whether a message arriving now would be kept for the consumer (or delivered): the call has not failed, the
    /// peer has not ended its direction, and it has credit left.
    @inlinable
    package var acceptsMessages: Bool {
        self.failure == nil && !self.inboundEnded && self.peerCredit > 0 && !self.receivingStopped
    }

    /// Whether a message arriving now would be taken, credit aside: the call has not failed, the peer has not ended
    /// its direction, and the consumer still reads.
    @inlinable
    package var takesMessages: Bool {
        self.failure == nil && !self.inboundEnded && !self.receivingStopped
    }

    /// A message of the call arrived, with `descriptors` descriptors.
    @inlinable
    package mutating func messageReceived(_ message: ByteBuffer, descriptors: Int = 0) -> ReceiveAction {
        guard self.failure == nil, !self.inboundEnded else { return .none }
        let cost = self.cost(payloadLength: message.readableBytes, descriptors: descriptors)
        guard self.peerMaySend(cost: cost) else { return .violation }
        if let granted = self.grantedBlockedCost {
            // Credit given for the message the peer said it was blocked on: this must be that message.
            guard cost == granted else { return .violation }
            self.grantedBlockedCost = nil
        }
        self.peerCredit -= cost
        // The message the peer was blocked on, if it was: a sender blocks again for its next one.
        self.peerBlockedCost = nil
        if self.receivingStopped { return .none }
        if let waiter = self.readWaiter.take() {
            return .deliver(waiter, message)
        }
        // Queued for a consumer that may take its time: kept apart from the read buffer it arrived in.
        self.inbound.append(message.compacted())
        return .none
    }

    /// This side takes no more messages: drops those held and those to come (see ``receivingStopped``); returns
    /// whether any was held. Gives no more credit.
    @inlinable
    package mutating func stopReceiving() -> Bool {
        self.receivingStopped = true
        let held = self.inbound.count > 0
        self.inbound.removeAll()
        return held
    }

    /// What a call-blocked frame from the peer leads to.
    @usableFromInline
    package enum BlockedAction: Equatable {
        /// Give the peer this much credit now (this side's reader waits, with nothing to read).
        case grant(Int)
        /// Nothing now: the credit is given once the reader waits with nothing to read, or not at all (the peer has
        /// enough already, the call is over, or this side takes no more messages).
        case none
        /// The cost is above what any message may cost here: a protocol violation.
        case violation
    }

    /// The peer has a message that costs `cost` bytes of credit (its frame's bytes) and lacks the credit for it
    /// (``CallFrame/blocked(_:)``).
    ///
    /// The credit is given only to a reader that waits with nothing to read: a consumer that is busy, or stopped
    /// reading, keeps its producer within one window, and a message larger than the window is held only once the
    /// application asked for it.
    /// - Parameter maximumCost: The most a message may cost here (9 bytes and the maximum message size); a cost above
    ///   it, or above ``maximumWindow``, is a violation.
    @inlinable
    package mutating func blockedReceived(cost: Int, maximumCost: Int) -> BlockedAction {
        guard cost <= min(maximumCost, Self.maximumWindow) else { return .violation }
        guard self.failure == nil, !self.inboundEnded, !self.receivingStopped, self.strictCredit,
            cost > self.peerCredit
        else {
            return .none
        }
        self.peerBlockedCost = cost
        guard self.readWaiter != nil || self.writerHeldUp else { return .none }
        return .grant(self.creditForBlockedPeer())
    }

    /// On the caller's side (``grantsWhileWriting``): whether this side's producer is held up by the peer's credit,
    /// waiting or with its message parked.
    @inlinable
    var writerHeldUp: Bool {
        self.grantsWhileWriting && (self.writeWaiter != nil || self.hasParkedMessage)
    }

    /// On the caller's side: the credit a blocked peer lacks, now that this side's producer is held up by credit
    /// (after ``SendAction/wait`` or ``SendAction/park(cost:)``) with nothing to read; 0 otherwise.
    @inlinable
    package mutating func creditForBlockedPeerWhileWriting() -> Int {
        guard self.writerHeldUp else { return 0 }
        return self.creditForBlockedPeer()
    }

    /// The credit the blocked peer lacks, taken as given, when this side's reader waits with nothing to read; 0
    /// otherwise.
    @inlinable
    mutating func creditForBlockedPeer() -> Int {
        guard let cost = self.peerBlockedCost, self.inbound.count == 0, self.failure == nil, !self.inboundEnded,
            !self.receivingStopped
        else {
            return 0
        }
        self.peerBlockedCost = nil
        guard cost > self.peerCredit else { return 0 }
        let grant = cost - self.peerCredit
        self.peerCredit = cost
        self.grantedBlockedCost = cost
        self.creditBeyondWindow += grant
        return grant
    }

    /// The peer's end of its direction arrived; `fromCaller` when this side handles the call, and the end is the
    /// caller's half-close.
    ///
    /// A caller's end says nothing but that its requests are over (PROTOCOL.md: its code, text and details are
    /// empty), so only its code is kept: a hostile caller's details (up to 16 MiB a frame, which cost no credit) would
    /// otherwise stay, with the read buffer they are a slice of, until the handler ends.
    @inlinable
    package mutating func endReceived(_ status: CallStatus, fromCaller: Bool = false) -> ReceiveAction {
        guard self.failure == nil, !self.inboundEnded else { return .none }
        let status = fromCaller ? CallStatus(code: status.code) : status
        self.inboundEnd = status
        if let waiter = self.readWaiter.take() {
            return .end(waiter, status)
        }
        return .none
    }

    /// What the consumer gets when it asks for the next message.
    @usableFromInline
    package enum NextAction {
        /// A message; give `credit` bytes back to the peer first if it is above zero.
        case message(ByteBuffer, credit: Int)
        /// The peer ended its direction with this status; nothing more comes.
        case end(CallStatus)
        /// The call failed.
        case fail(any Error)
        /// Nothing yet: the waiter is kept. Give `credit` bytes to the peer first if it is above zero: the peer is
        /// blocked on a message larger than its credit, which the waiting reader now asks for.
        case wait(credit: Int)
    }

    /// The consumer asks for the next message, with `waiter` to keep if there is none yet.
    @inlinable
    package mutating func next(orWait waiter: ReadWaiter) -> NextAction {
        if let message = self.inbound.popFirst() {
            return .message(message, credit: self.consumed(message))
        }
        if let end = self.inboundEnd { return .end(end) }
        if let failure = self.failure { return .fail(failure) }
        // One reader at a time: a second waiter would replace the first, which would then never be resumed.
        guard self.readWaiter == nil else { return .fail(Self.concurrentUse("reads")) }
        self.readWaiter = waiter
        return .wait(credit: self.creditForBlockedPeer())
    }

    /// The error of a second task that waits to read (or to write) while another already does.
    @usableFromInline
    static func concurrentUse(_ what: String) -> SocketIPCError {
        SocketIPCError(
            .invalidState,
            "another task already waits on this call's stream; a call's stream takes one task at a time that \(what)"
        )
    }

    /// The consumer asks for the next message and will not wait: ``NextAction/wait(credit:)`` means there is none yet
    /// (nothing was kept, and no credit is given).
    @inlinable
    package mutating func poll() -> NextAction {
        if let message = self.inbound.popFirst() {
            return .message(message, credit: self.consumed(message))
        }
        if let end = self.inboundEnd { return .end(end) }
        if let failure = self.failure { return .fail(failure) }
        return .wait(credit: 0)
    }

    /// The consumer took `message` (handed to it by ``ReceiveAction/deliver(_:_:)``): the credit to give back, if
    /// any.
    @inlinable
    package mutating func delivered(_ message: ByteBuffer) -> Int {
        self.consumed(message)
    }

    @inlinable
    mutating func consumed(_ message: ByteBuffer) -> Int {
        self.consumed(cost: Self.frameCost(payloadLength: message.readableBytes))
    }

    /// The consumer took `count` descriptors, those of the message it took last: the credit to give back for them
    /// (``chargesDescriptors``), if any. The message's bytes are given back as it is taken; its descriptors, once the
    /// caller has them (they are kept beside the state machine).
    @inlinable
    package mutating func descriptorsConsumed(_ count: Int) -> Int {
        guard self.chargesDescriptors, count > 0 else { return 0 }
        return self.consumed(cost: count * Self.descriptorCost)
    }

    @inlinable
    mutating func consumed(cost: Int) -> Int {
        var cost = cost
        if self.creditBeyondWindow > 0 {
            // Paid for by credit given beyond the window: not given back.
            let paid = min(self.creditBeyondWindow, cost)
            self.creditBeyondWindow -= paid
            cost -= paid
        }
        self.consumedSinceGrant += cost
        guard self.consumedSinceGrant >= Self.grantThreshold, !self.inboundEnded, self.failure == nil,
            !self.receivingStopped
        else {
            return 0
        }
        let grant = self.consumedSinceGrant
        self.consumedSinceGrant = 0
        self.peerCredit += grant
        if let cost = self.peerBlockedCost, cost <= self.peerCredit { self.peerBlockedCost = nil }
        return grant
    }

    // MARK: - Outbound

    /// What a producer may do.
    @usableFromInline
    package enum SendAction {
        /// Send the message now (its cost is taken).
        case send
        /// Wait: the waiter is kept until credit comes.
        case wait
        /// Strict credit: the message costs more than the credit there is. It is accepted (the producer goes on, as
        /// with version 1's credit, and the caller keeps the message: ``parkedSendable``), and goes once credit
        /// covers `cost`; tell the peer first that this side is blocked on it (``CallFrame/blocked(_:)``), since
        /// credit beyond its window comes only when asked for.
        case park(cost: Int)
        /// The call is over.
        case fail(any Error)
    }

    /// The producer wants to send a message of `payloadLength` bytes with `descriptors` descriptors.
    @inlinable
    package mutating func reserveSend(payloadLength: Int, descriptors: Int = 0, orWait waiter: WriteWaiter) -> SendAction {
        if let failure = self.failure { return .fail(failure) }
        if let refused = self.sendsRefused { return .fail(refused) }
        if self.outboundEnded { return .fail(SocketIPCError(.invalidState, "the call's stream was already finished")) }
        let cost = self.cost(payloadLength: payloadLength, descriptors: descriptors)
        if let action = self.sendOrPark(cost: cost) { return action }
        // One writer at a time, as one reader: a second waiter would leave the first waiting for ever.
        guard self.writeWaiter == nil else { return .fail(Self.concurrentUse("writes")) }
        self.writeWaiter = (waiter, cost)
        return .wait
    }

    /// The producer wants to send a message of `payloadLength` bytes with `descriptors` descriptors and will not
    /// wait: ``SendAction/send`` (its cost is taken), ``SendAction/park(cost:)``, or ``SendAction/wait`` (nothing was
    /// kept).
    /// - Throws: What the call failed with, or `invalidState` once this side ended its direction.
    @inlinable
    package mutating func trySend(payloadLength: Int, descriptors: Int = 0) throws -> SendAction {
        if let failure = self.failure { throw failure }
        if let refused = self.sendsRefused { throw refused }
        if self.outboundEnded { throw SocketIPCError(.invalidState, "the call's stream was already finished") }
        return self.sendOrPark(cost: self.cost(payloadLength: payloadLength, descriptors: descriptors)) ?? .wait
    }

    /// A message that costs `cost` goes now (its cost taken), or is parked; `nil` if the producer has to wait: the
    /// credit is not above zero, or (strict) a message is parked already. With strict credit a message of up to half
    /// the window goes while the credit is above zero, as with version 1's rule (``parksMessage(cost:)``).
    @inlinable
    mutating func sendOrPark(cost: Int) -> SendAction? {
        guard self.strictCredit else {
            guard self.sendCredit > 0 else { return nil }
            self.sendCredit -= cost
            return .send
        }
        guard self.parkedCost == nil, !self.sendingParked, self.sendCredit > 0 else { return nil }
        if cost <= self.sendCredit || !Self.parksMessage(cost: cost) {
            self.sendCredit -= cost
            return .send
        }
        self.parkedCost = cost
        self.parkedIsAnnounced = false
        return .park(cost: cost)
    }

    /// Strict credit: whether a message of `cost` must fit its credit, and is parked (and announced with a
    /// call-blocked frame) when it does not: one above half the window. A smaller one goes while the credit is above
    /// zero, taking it below zero by less than half a window, as with version 1's rule: so a receiver holds at most a
    /// window and a half per call, and two sides that each write a few messages of 16 to 32 KiB before they read do not
    /// wait for each other, where with whole credit required each got one message fewer out (found by a review: such a
    /// stream hung).
    @inlinable
    package static func parksMessage(cost: Int) -> Bool { cost > Self.initialWindow / 2 }

    /// The most credit a sender may hold: 2³¹ − 1 bytes, as HTTP/2's flow-control window (RFC 9113, section
    /// 6.9.1). Credit beyond it is a protocol error, so that no count can overflow however many credit frames a peer
    /// sends.
    @inlinable
    package static var maximumWindow: Int { Int(Int32.max) }

    /// What credit from the peer leads to.
    @usableFromInline
    package enum CreditAction {
        /// Nothing waits, or the credit is not enough yet.
        case none
        /// Resume the producer: it may send now (its message's cost is taken: it sends as soon as it is resumed).
        case resume(WriteWaiter)
        /// Strict credit: resume the producer to try again (nothing is taken: ``reserveSend(payloadLength:orWait:)``
        /// again).
        case retry(WriteWaiter)
        /// Strict credit: the parked message's cost is taken; send it (before anything else of the call), then call
        /// ``parkedSent()``.
        case sendParked
        /// The credit would take the window above ``maximumWindow``: a protocol violation.
        case violation
    }

    /// The peer gave `increment` bytes of credit.
    @inlinable
    package mutating func creditReceived(_ increment: UInt32) -> CreditAction {
        guard Int(increment) <= Self.maximumWindow - self.sendCredit else { return .violation }
        self.sendCredit += Int(increment)
        if self.strictCredit {
            if let cost = self.parkedCost {
                guard self.parkedIsAnnounced, cost <= self.sendCredit else { return .none }
                self.sendCredit -= cost
                self.parkedCost = nil
                self.sendingParked = true
                return .sendParked
            }
            guard !self.sendingParked else { return .none }
            return self.resumeWaitingWriter() ?? .none
        }
        guard self.sendCredit > 0, let (waiter, cost) = self.writeWaiter.take() else { return .none }
        self.sendCredit -= cost
        return .resume(waiter)
    }

    /// What ending this side's direction leads to.
    @usableFromInline
    package enum EndAction: Equatable {
        /// Send the end frame now.
        case send
        /// Send it after the parked message, which still waits for credit (``parkedSent()`` says when).
        case afterParked
        /// Nothing: the direction had already ended (or the call failed).
        case none
    }

    /// Strict credit: the producer waiting for credit, if it may go on now: resumed with its message's cost taken if
    /// the credit covers it, or to try again (and park it) if it is one to park and the credit is above zero.
    @inlinable
    mutating func resumeWaitingWriter() -> CreditAction? {
        guard let (waiter, cost) = self.writeWaiter else { return nil }
        if cost <= self.sendCredit || (!Self.parksMessage(cost: cost) && self.sendCredit > 0) {
            self.writeWaiter = nil
            self.sendCredit -= cost
            return .resume(waiter)
        }
        guard Self.parksMessage(cost: cost), self.sendCredit > 0 else { return nil }
        self.writeWaiter = nil
        return .retry(waiter)
    }

    /// This side ends its direction: whether the end frame is to be sent, now or after the parked message.
    @inlinable
    package mutating func endOutbound() -> EndAction {
        guard !self.outboundEnded, self.failure == nil else { return .none }
        self.outboundEnded = true
        return self.endNowOrAfterParked()
    }

    /// This side ends its direction even though the call failed on its side (the handler's side stopped it: its
    /// deadline passed, its server is shutting down) and the peer must hear why: as ``endOutbound()``.
    @inlinable
    package mutating func endOutboundAfterStop() -> EndAction {
        guard !self.outboundEnded else { return .none }
        self.outboundEnded = true
        return self.endNowOrAfterParked()
    }

    @inlinable
    mutating func endNowOrAfterParked() -> EndAction {
        guard self.hasParkedMessage, self.failure == nil, self.sendsRefused == nil else { return .send }
        self.endAfterParked = true
        return .afterParked
    }

    /// Whether the peer ended its direction. A pattern, not `!= nil`, which went through `CallStatus`'s value
    /// witness on every message.
    @inlinable
    package var inboundEnded: Bool {
        if case .some = self.inboundEnd { return true }
        return false
    }

    // MARK: - Failure

    /// The waiters to resume with the failure.
    @usableFromInline
    package struct FailAction {
        @usableFromInline
        package var readWaiter: ReadWaiter?
        @usableFromInline
        package var writeWaiter: WriteWaiter?

        @inlinable
        init(readWaiter: ReadWaiter? = nil, writeWaiter: WriteWaiter? = nil) {
            self.readWaiter = readWaiter
            self.writeWaiter = writeWaiter
        }
    }

    /// The call ends abruptly with `error` (cancelled, deadline passed, connection closed).
    /// - Parameter keepingReceived: Whether the messages already received are still read before the end (if the peer
    ///   had ended its direction) or `error`: the connection closed under a call, after they had arrived (as gRPC
    ///   delivers the messages it received before a stream's status). Otherwise (this side gave the call up: its
    ///   cancel, its deadline) they are dropped.
    @inlinable
    package mutating func fail(_ error: any Error, keepingReceived: Bool = false) -> FailAction {
        guard self.failure == nil else { return FailAction() }
        self.failure = error
        if !keepingReceived { self.inbound.removeAll() }
        self.dropParked()
        return FailAction(readWaiter: self.readWaiter.take(), writeWaiter: self.writeWaiter.take()?.waiter)
    }

    /// The other side ended the whole call while this side still sends (on the caller's side: the handler's end):
    /// every send from now on fails with the error `makeError` makes (only if this side still sends); returns the
    /// producer waiting for credit and the error, to fail it with.
    @inlinable
    package mutating func refuseSends(
        with makeError: () -> any Error
    ) -> (waiter: WriteWaiter?, error: any Error)? {
        guard self.failure == nil, !self.outboundEnded, self.sendsRefused == nil else { return nil }
        let error = makeError()
        self.sendsRefused = error
        self.dropParked()
        return (self.writeWaiter.take()?.waiter, error)
    }

    /// Why this side's sends are refused because the other side ended the call (``refuseSends(with:)``), if they are.
    @inlinable
    package var sendsRefusedError: (any Error)? { self.sendsRefused }

    /// Whether a reader or a writer waits.
    @inlinable
    package var hasWaiters: Bool { self.readWaiter != nil || self.writeWaiter != nil }

    /// Messages received and not yet consumed, and their bytes.
    @inlinable
    package var bufferedMessageCount: Int { self.inbound.count }

    /// Without strict credit: the bytes (as credit counts them) of the messages held for the consumer beyond one
    /// window, which only a message that took the peer's credit below zero puts there (version 1's rule lets one
    /// go); 0 with strict credit, where no message goes beyond its credit.
    ///
    /// What is held is what arrived and was not consumed: the window less the credit left and less what was consumed
    /// but not yet given back.
    @inlinable
    package var heldBeyondWindow: Int {
        guard !self.strictCredit, self.inbound.count > 0 else { return 0 }
        return max(0, -(self.peerCredit + self.consumedSinceGrant))
    }
    /// What this side may still send, in bytes.
    @inlinable
    package var availableSendCredit: Int { self.sendCredit }
}
