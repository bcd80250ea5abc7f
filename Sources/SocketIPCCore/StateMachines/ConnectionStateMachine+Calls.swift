// Calls (frames 0x06 to 0x0A) as the connection sees them: each one in progress keeps a connection that goes away
// open, as a request does; the calls' own state is the services layer's (`CallStateMachine`).
extension ConnectionStateMachine {
    /// Whether a call may start.
    @usableFromInline
    package enum CallStartAction: Equatable, Sendable {
        /// Counted: go on, and report ``callEnded()`` once it is over.
        case proceed
        /// Refused: the connection is closed, or going away; nothing was counted.
        case fail(SocketIPCError)
    }

    /// This side opens a call. Refused once either side announced going away (as a request is), with the peer's
    /// reason where it gave one.
    @inlinable
    package mutating func outgoingCallStarted() -> CallStartAction {
        switch self.state {
        case .open(var requests):
            self.state = .modifying
            requests.activeCalls += 1
            self.state = .open(requests)
            return .proceed
        case .goingAway(_, let peerError):
            return .fail(
                peerError
                    ?? SocketIPCError(.connectionClosed, "the connection is closing: this side has announced it is going away")
            )
        case .peerFailed(_, let error):
            return .fail(error)
        case .closed(let closed):
            return .fail(closed.error)
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// The peer opened a call. Refused (the caller answers it with status `unavailable`) while this side or the peer
    /// is going away: a connection that drains takes no new work that could keep it open.
    @inlinable
    package mutating func incomingCallStarted() -> CallStartAction {
        switch self.state {
        case .open(var requests):
            self.state = .modifying
            requests.activeCalls += 1
            self.state = .open(requests)
            return .proceed
        case .goingAway:
            return .fail(SocketIPCError(.peerGoingAway, "the server is going away and takes no new calls"))
        case .peerFailed(_, let error):
            return .fail(error)
        case .closed(let closed):
            return .fail(closed.error)
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// A call counted by ``outgoingCallStarted()`` or ``incomingCallStarted()`` is over.
    /// - Returns: Whether the connection went away and this was the last thing it waited for: flush and close.
    @inlinable
    package mutating func callEnded() -> Bool {
        self.modifyRequests(closed: false) { requests, goingAway in
            requests.activeCalls -= 1
            return goingAway && requests.isDrained
        }
    }

    /// How many calls are in progress either way.
    package var activeCallCount: Int {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _): requests.activeCalls
        case .closed: 0
        case .modifying: preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }
}
