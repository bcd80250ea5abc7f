import NIOCore

// Strict credit (``HelloFlags/strictCredit``), the sending side: a message that costs more credit than there is is
// *parked*. The producer goes on as with version 1's credit (which let such a message go beyond the credit), the
// caller keeps the message, and whoever receives the credit that covers it sends it (``CreditAction/sendParked``).
// So an application that sends one large message and then reads does not wait for its peer to read first, as a
// gRPC sender's write returns once its transport has taken the message, while the wire never carries a message
// beyond its credit.
//
// ```
//   producer --reserveSend--> cost <= credit: send
//                             cost > half the window, credit > 0, nothing parked: park (tell the peer: call
//                             blocked, cost)
//                             otherwise: wait --credit--> resume (cost covered) or retry (to park)
//   credit covers the parked cost --> sendParked --> the caller sends it, then parkedSent():
//                                     its end (if it waited), and the producer waiting to retry
// ```
extension CallStateMachine {
    /// Whether a message is parked, or on its way out after it (its end then waits for it).
    @inlinable
    package var hasParkedMessage: Bool { self.parkedCost != nil || self.sendingParked }

    /// What follows the parked message once the caller has queued it.
    @usableFromInline
    package struct ParkedSentAction {
        /// Send this side's end now: it waited for the parked message.
        @usableFromInline
        package var sendEnd: Bool
        /// The producer waiting behind the parked message, if it may go on now: ``CreditAction/resume(_:)`` (its
        /// message's cost taken) or ``CreditAction/retry(_:)``.
        @usableFromInline
        package var writer: CreditAction?

        @inlinable
        init(sendEnd: Bool, writer: CreditAction?) {
            self.sendEnd = sendEnd
            self.writer = writer
        }
    }

    /// The caller queued the parked message (after ``CreditAction/sendParked``).
    @inlinable
    package mutating func parkedSent() -> ParkedSentAction {
        guard self.sendingParked else { return ParkedSentAction(sendEnd: false, writer: nil) }
        self.sendingParked = false
        let sendEnd = self.endAfterParked && self.failure == nil && self.sendsRefused == nil
        self.endAfterParked = false
        return ParkedSentAction(sendEnd: sendEnd, writer: self.resumeWaitingWriter())
    }

    /// The caller queued the call-blocked frame for the parked message (after ``SendAction/park(cost:)``): returns
    /// whether the credit already covers the message, whose cost is then taken (send it, then call
    /// ``parkedSent()``, as after ``CreditAction/sendParked``). Credit that comes before the frame is queued does not
    /// send the message: the peer would read the frame after the message, and take it for the next one's.
    @inlinable
    package mutating func parkedAnnounced() -> Bool {
        guard let cost = self.parkedCost, !self.parkedIsAnnounced else { return false }
        self.parkedIsAnnounced = true
        guard cost <= self.sendCredit else { return false }
        self.sendCredit -= cost
        self.parkedCost = nil
        self.sendingParked = true
        return true
    }

    /// Forgets the parked message (the call failed, or the other side ended it): it never goes, and neither does an
    /// end that waited for it.
    @inlinable
    mutating func dropParked() {
        self.parkedCost = nil
        self.parkedIsAnnounced = false
        self.endAfterParked = false
    }
}
