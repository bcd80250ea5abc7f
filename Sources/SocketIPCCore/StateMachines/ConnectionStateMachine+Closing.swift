import NIOCore

// Going away in either direction, and the close.
extension ConnectionStateMachine {
    /// What to do after this side announced it is going away.
    @usableFromInline
    package enum GoAwayAction: Equatable, Sendable {
        /// Nothing: the connection is closed or already going away (the frame was not queued).
        case none
        /// The going-away frame is queued and no flush was due: schedule one.
        case scheduleFlush
        /// The frame is queued and nothing is left to wait for: flush and close.
        case close
    }

    /// What to do after the peer announced it is going away.
    @usableFromInline
    package enum PeerGoingAwayAction: Equatable, Sendable {
        /// Nothing now: the connection closes once drained, or the channel handler closes it (a reason other than
        /// `0x00`), or it is closed already.
        case none
        /// Nothing is left to wait for: flush and close.
        case close
    }

    /// What to fail once the channel closed.
    @usableFromInline
    package enum ClosedAction {
        /// Nothing: the machine was closed already.
        case none
        /// Fail these requests (cancelling their timers) and these writers with `error`.
        case fail(requests: [PendingRequest], writers: [WriteWaiter], error: SocketIPCError)
    }

    /// This side announces it is going away: queues `frame` (the going-away frame), refuses new requests from now
    /// on, and closes once every request the peer made is answered and every request this side made has ended. Does
    /// nothing if the connection is closed or already going away (the peer went away first, or this was called
    /// before).
    /// - Parameter frame: The going-away frame's bytes.
    package mutating func goAway(frame: ByteBuffer) -> GoAwayAction {
        switch self.state {
        case .open(let requests):
            self.state = .goingAway(requests, peerError: nil)
            return self.queueGoingAway(frame, drained: requests.isDrained)
        case .peerFailed(let requests, let error):
            self.state = .goingAway(requests, peerError: error)
            return self.queueGoingAway(frame, drained: requests.isDrained)
        case .goingAway, .closed:
            return .none
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    @inlinable
    mutating func queueGoingAway(_ frame: ByteBuffer, drained: Bool) -> GoAwayAction {
        self.outbound.queue.appendRaw(frame)
        let schedule = self.outbound.scheduleFlushIfNeeded()
        if drained { return .close }
        return schedule ? .scheduleFlush : .none
    }

    /// The peer announced it is going away. After reason `0x00` this side sends no new requests, answers the peer's
    /// requests still unanswered and waits for the replies to its own, then closes. After any other reason the
    /// channel handler closes the connection at once, and requests in flight fail with `error`.
    /// - Parameters:
    ///   - isNormal: Whether the reason is `0x00`.
    ///   - error: What new requests (and, for another reason, those in flight) fail with.
    package mutating func peerIsGoingAway(isNormal: Bool, error: SocketIPCError) -> PeerGoingAwayAction {
        switch self.state {
        case .open(let requests), .peerFailed(let requests, _):
            guard isNormal else {
                self.state = .peerFailed(requests, error: error)
                return .none
            }
            self.state = .goingAway(requests, peerError: error)
            return requests.isDrained ? .close : .none
        case .goingAway(let requests, _):
            self.state = .goingAway(requests, peerError: error)
            return .none
        case .closed(var closed):
            closed.peerError = error
            self.state = .closed(closed)
            return .none
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// The channel closed (once: later calls do nothing). Everything queued is dropped; everything waiting fails
    /// with the reason the peer gave when it went away (other than `0x00`, which says more than the I/O error its
    /// close may cause here), else `error`, else ``SocketIPCError/closed``.
    /// - Parameter error: Why the channel closed, `nil` for an orderly close.
    package mutating func closed(error: SocketIPCError?) -> ClosedAction {
        let requests: Requests
        let peerError: SocketIPCError?
        switch self.state {
        case .open(let open):
            (requests, peerError) = (open, nil)
        case .goingAway(let open, let error):
            (requests, peerError) = (open, error)
        case .peerFailed(let open, let error):
            (requests, peerError) = (open, error)
        case .closed:
            return .none
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
        let finalError: SocketIPCError
        if let peerError, peerError.code != .peerGoingAway {
            finalError = peerError
        } else {
            finalError = error ?? .closed
        }
        // What is still queued never left; nor did what the socket refused before.
        let unsentFrom = min(self.outbound.refusedFrom ?? .max, self.outbound.queue.takenBytes)
        self.state = .closed(Closed(error: finalError, peerError: peerError, unsentFrom: unsentFrom))
        let writers = self.outbound.writeWaiters.map(\.waiter)
        self.outbound.writeWaiters = []
        _ = self.outbound.queue.takeAll()
        return .fail(requests: Array(requests.pending.values), writers: writers, error: finalError)
    }
}
