import NIOCore

// Requests either way: this side's waiting for replies, and the peer's waiting for answers.
extension ConnectionStateMachine {
    /// What to do with a request this side wants to send.
    @usableFromInline
    package enum RegisterAction {
        /// The request is not sent: fail its continuation with this error (the connection is closed or going away,
        /// or the calling task was cancelled: `CancellationError`).
        case fail(any Error)
        /// The request is queued and waits for its reply. `scheduleFlush`: no flush was due yet, so the caller
        /// flushes (at once on the event loop: nothing more will be coalesced with a request whose sender waits) or
        /// schedules a flush.
        case registered(scheduleFlush: Bool)
    }

    /// What to do once a request of this side has ended.
    @usableFromInline
    package enum FinishAction {
        /// No request with that id is pending (it timed out, was cancelled or was answered before): drop the result.
        case none
        /// Resume `continuation` with the result and cancel `timer`. `close`: the connection is going away and this
        /// was the last thing it waited for, so the caller flushes and closes it.
        case resume(RequestContinuation, timer: Timer?, close: Bool)
    }

    /// What to do once this side answered one of the peer's requests.
    @usableFromInline
    package struct AnswerAction: Equatable, Sendable {
        /// No flush was due yet: the caller schedules one on the event loop.
        @usableFromInline
        package var scheduleFlush: Bool
        /// The channel handler stopped handing out the peer's frames at the maximum of unanswered requests, and this
        /// answer made room: the caller tells it to go on (only the answer that clears the pause does, so a burst of
        /// answers costs one hop).
        @usableFromInline
        package var resumeReading: Bool
        /// The connection is going away and this was the last thing it waited for: the caller flushes and closes it.
        @usableFromInline
        package var close: Bool
        /// The answer counted its request as answered: the request was still unanswered and the connection open (a
        /// server gives it back to its user's count, ``ServerConfiguration``'s `maximumConcurrentRequestsPerUser`).
        @usableFromInline
        package var answered: Bool

        /// Makes an action.
        @inlinable
        package init(scheduleFlush: Bool, resumeReading: Bool, close: Bool, answered: Bool = false) {
            self.scheduleFlush = scheduleFlush
            self.resumeReading = resumeReading
            self.close = close
            self.answered = answered
        }
    }

    /// Whether the channel handler stops handing out the peer's frames.
    @usableFromInline
    package enum PauseAction: Equatable, Sendable {
        /// Stop: an answer that makes room returns ``AnswerAction/resumeReading``.
        case pause
        /// Go on: answers made room already.
        case keepReading
    }

    /// This side sends a request and waits for its reply: queues it, unless the connection is closed or going away
    /// or the calling task was cancelled (read here, under the caller's lock, so that a cancellation handler that
    /// ran before this registration, and so found nothing to cancel, is seen now).
    /// - Parameters:
    ///   - id: The request's id, unique among this side's requests in flight.
    ///   - payload: The request's payload.
    ///   - continuation: What the reply resumes.
    ///   - isCancelled: Whether the calling task is cancelled.
    ///   - spareBuffer: Asked only when the queue needs a new coalescing buffer.
    ///   - makeTimer: Called once the request is registered, to schedule its timeout (`nil` for none). Called under
    ///     the caller's lock: it must schedule the timer, never run it.
    @inlinable
    package mutating func register(
        id: UInt32,
        payload: ByteBuffer,
        continuation: RequestContinuation,
        isCancelled: @autoclosure () -> Bool,
        spareBuffer: () -> ByteBuffer?,
        makeTimer: () -> Timer?,
        passing descriptors: Int = 0,
        registerDescriptors: () -> Void = {},
        sharedPayloadLength: Int? = nil
    ) -> RegisterAction {
        switch self.state {
        case .open(var requests):
            if isCancelled() { return .fail(CancellationError()) }
            self.state = .modifying
            requests.pending[id] = PendingRequest(continuation: continuation, timer: makeTimer())
            self.state = .open(requests)
            self.appendOutbound(
                .request, id: id, payload: payload, spareBuffer: spareBuffer, passing: descriptors,
                registerDescriptors: registerDescriptors, sharedPayloadLength: sharedPayloadLength
            )
            return .registered(scheduleFlush: self.outbound.scheduleFlushIfNeeded())
        case .goingAway(_, let peerError):
            return .fail(
                peerError
                    ?? SocketIPCError(
                        .connectionClosed,
                        "the connection is closing: this side has announced it is going away"
                    )
            )
        case .peerFailed(_, let error):
            return .fail(error)
        case .closed(let closed):
            return .fail(closed.error)
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// A request of this side ended: its reply arrived, it timed out, or its task was cancelled. Only the first
    /// of these for an id finds it pending.
    /// - Parameter id: The request's id.
    @inlinable
    package mutating func finishRequest(id: UInt32) -> FinishAction {
        self.modifyRequests(closed: .none) { requests, goingAway in
            guard let pending = requests.pending.removeValue(forKey: id) else { return .none }
            return .resume(pending.continuation, timer: pending.timer, close: goingAway && requests.isDrained)
        }
    }

    /// The channel handler hands a request of the peer to the handler.
    /// - Parameters:
    ///   - id: The request's id.
    ///   - bytes: Its payload's size: a large one also counts against ``maximumUnansweredRequestBytes``.
    /// - Returns: How many of the peer's requests are now unanswered (0 once closed), or `Int.max` once its
    ///   unanswered large requests hold ``maximumUnansweredRequestBytes`` or more, so that the handler pauses either
    ///   way; and the ticket that ``answer(_:id:ticket:payload:spareBuffer:passing:registerDescriptors:sharedPayloadLength:)``
    ///   takes (``ReplyTicket/none`` once closed).
    @inlinable
    @inline(__always)
    package mutating func requestReceived(id: UInt32 = 0, bytes: Int = 0) -> (unanswered: Int, ticket: ReplyTicket) {
        let budget = self.maximumUnansweredRequestBytes
        return self.modifyRequests(closed: (0, .none)) { requests, _ in
            requests.unanswered += 1
            guard bytes >= Self.largeRequestSize else { return (requests.unanswered, requests.tickets.take()) }
            // Kept with the request's ticket, not its id: a peer may reuse an id while an earlier request with it
            // waits, and the answer to either must give back its own bytes.
            let ticket = requests.tickets.take(counting: bytes)
            requests.largeBytes += bytes
            return (requests.largeBytes >= budget ? .max : requests.unanswered, ticket)
        }
    }

    /// This side answers one of the peer's requests: queues the reply (or error reply) and counts the request as
    /// answered. Once closed, or when `ticket` was spent by an earlier answer (a handler that completed its reply
    /// twice), nothing is queued or counted.
    /// - Parameters:
    ///   - kind: ``FrameKind/reply`` or ``FrameKind/errorReply``.
    ///   - id: The id of the peer's request.
    ///   - ticket: What ``requestReceived(id:bytes:)`` returned for the request.
    ///   - payload: The reply's payload.
    ///   - spareBuffer: Asked only when the queue needs a new coalescing buffer.
    @inlinable
    package mutating func answer(
        _ kind: FrameKind,
        id: UInt32,
        ticket: ReplyTicket,
        payload: ByteBuffer,
        spareBuffer: () -> ByteBuffer?,
        passing descriptors: Int = 0,
        registerDescriptors: () -> Void = {},
        sharedPayloadLength: Int? = nil
    ) -> AnswerAction {
        let maximum = self.maximumConcurrentRequests
        let budget = self.maximumUnansweredRequestBytes
        let (answered, resumeReading, close) = self.modifyRequests(closed: (false, false, false)) {
            requests, goingAway in
            guard let counted = requests.tickets.redeem(ticket) else { return (false, false, false) }
            requests.unanswered -= 1
            requests.largeBytes -= counted
            // Reading goes on only below both limits: an answer to a small request while large ones hold the bytes
            // must not let more in (found by a review: small and large requests in turn got past the bytes).
            let resumeReading = requests.readingPaused && requests.mayRead(maximum: maximum, budget: budget)
            if resumeReading { requests.readingPaused = false }
            return (true, resumeReading, goingAway && requests.isDrained)
        }
        guard answered else {
            return AnswerAction(scheduleFlush: false, resumeReading: false, close: false)
        }
        self.appendOutbound(
            kind, id: id, payload: payload, spareBuffer: spareBuffer, passing: descriptors,
            registerDescriptors: registerDescriptors, sharedPayloadLength: sharedPayloadLength
        )
        return AnswerAction(
            scheduleFlush: self.outbound.scheduleFlushIfNeeded(),
            resumeReading: resumeReading,
            close: close,
            answered: true
        )
    }

    /// The peer's unanswered requests reached the maximum, in number or in bytes (as
    /// ``requestReceived(id:bytes:)`` counted them): the channel handler asks whether to stop handing out its frames.
    @inlinable
    package mutating func pauseReading() -> PauseAction {
        let maximum = self.maximumConcurrentRequests
        let budget = self.maximumUnansweredRequestBytes
        return self.modifyRequests(closed: .keepReading) { requests, _ in
            guard !requests.mayRead(maximum: maximum, budget: budget) else { return .keepReading }
            requests.readingPaused = true
            return .pause
        }
    }
}

extension ConnectionStateMachine {
    /// How many of the peer's requests were handed out and are not answered yet; 0 once closed (what was unanswered
    /// then is read with the close, ``closed(error:)``, under the same lock).
    @inlinable
    package var peerRequestsUnanswered: Int {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _): requests.unanswered
        case .closed, .modifying: 0
        }
    }
}

extension ConnectionStateMachine.Requests {
    /// Whether the channel handler may hand out the peer's frames: its unanswered requests are below `maximum` in
    /// number and `budget` in bytes.
    @inlinable
    func mayRead(maximum: Int, budget: Int) -> Bool {
        self.unanswered < maximum && self.largeBytes < budget
    }
}
