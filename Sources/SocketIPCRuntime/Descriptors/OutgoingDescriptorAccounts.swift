import Synchronization

/// The descriptors this side has committed to send and not yet handed to the kernel, per connection and per peer
/// user, and the senders that wait for room among them: the bound D-Bus puts on `max_outgoing_unix_fds`.
///
/// A descriptor is counted from the moment a sender has room for it (``OutgoingDescriptorReservation``), before it is
/// duplicated, until its connection's relay hands it to `sendmsg(2)`, closes it with the connection, or the sender
/// gives the room back unused. So senders that run at once cannot all pass a check of the count before any of them
/// is counted (found by a review: eight tasks each sending 253 descriptors closed their own connection at once).
///
/// - A sender that can wait (a message, a request, a call's message) waits while the connection has
///   ``DescriptorRelay/maximumOutgoing(maximumPerMessage:)`` counted (1,024 at least), or the peer's user
///   ``waitingBoundPerUser`` across its connections, unless none is counted there; on one connection in the order
///   they came.
/// - A sender that cannot wait (a reply) is refused beyond twice those: its peer reads what it asked for too
///   slowly, or not at all.
///
/// One lock, a leaf: nothing else is taken while it is held, so a relay may call in under its own lock. Waiters are
/// resumed by the caller, after it has unlocked.
enum OutgoingDescriptorAccounts {
    /// The most descriptors counted across the connections of one peer's user before a sender that can wait waits:
    /// 4,096, four connections' worth at the least.
    static let waitingBoundPerUser = 4096
    /// The most counted across one peer user's connections before a sender that cannot wait is refused: 8,192.
    static let refusingBoundPerUser = 2 * waitingBoundPerUser

    /// A sender waiting for room.
    struct Waiter {
        var number: UInt64
        var connection: ObjectIdentifier
        var user: UInt32?
        var count: Int
        /// The connection's bound of counted descriptors for senders that wait.
        var bound: Int
        /// Resumed with whether the room was counted (`false`: the connection stopped sending; the send then fails).
        var continuation: UnsafeContinuation<Bool, any Error>
    }

    struct State {
        var byConnection: [ObjectIdentifier: Int] = [:]
        var byUser: [UInt32?: Int] = [:]
        /// In the order they came.
        var waiters: [Waiter] = []
        var nextNumber: UInt64 = 0

        func counted(_ connection: ObjectIdentifier) -> Int { self.byConnection[connection] ?? 0 }
        func counted(user: UInt32?) -> Int { self.byUser[user] ?? 0 }

        /// Whether `count` more fit for a sender that waits: within the connection's `bound` and the user's, or
        /// nothing counted there (so a group larger than a bound still goes, alone).
        func fits(_ count: Int, connection: ObjectIdentifier, user: UInt32?, bound: Int) -> Bool {
            let onConnection = self.counted(connection)
            let ofUser = self.counted(user: user)
            return (onConnection == 0 || onConnection + count <= bound)
                && (ofUser == 0 || ofUser + count <= OutgoingDescriptorAccounts.waitingBoundPerUser)
        }

        mutating func add(_ count: Int, connection: ObjectIdentifier, user: UInt32?) {
            guard count != 0 else { return }
            let onConnection = self.counted(connection) + count
            self.byConnection[connection] = onConnection > 0 ? onConnection : nil
            let ofUser = self.counted(user: user) + count
            self.byUser[user] = ofUser > 0 ? ofUser : nil
        }

        /// Counts room for the waiters that now fit, in order (on one connection, none passes an earlier one that
        /// does not fit); returns them, to resume with `true`.
        mutating func admitWaiters() -> [UnsafeContinuation<Bool, any Error>] {
            guard !self.waiters.isEmpty else { return [] }
            var admitted: [UnsafeContinuation<Bool, any Error>] = []
            var heldUp: Set<ObjectIdentifier> = []
            var remaining: [Waiter] = []
            for waiter in self.waiters {
                if !heldUp.contains(waiter.connection),
                    self.fits(waiter.count, connection: waiter.connection, user: waiter.user, bound: waiter.bound)
                {
                    self.add(waiter.count, connection: waiter.connection, user: waiter.user)
                    admitted.append(waiter.continuation)
                } else {
                    heldUp.insert(waiter.connection)
                    remaining.append(waiter)
                }
            }
            self.waiters = remaining
            return admitted
        }
    }

    static let state = Mutex(State())

    /// What ``reserve(_:connection:user:bound:continuation:)`` did.
    enum Reserved {
        /// Counted now.
        case counted
        /// The waiter is kept, numbered for its cancellation.
        case waiting(UInt64)
    }

    /// Counts room for `count` if it fits and no earlier sender on the connection waits; otherwise keeps
    /// `continuation` until it does.
    static func reserve(
        _ count: Int,
        connection: ObjectIdentifier,
        user: UInt32?,
        bound: Int,
        continuation: UnsafeContinuation<Bool, any Error>
    ) -> Reserved {
        Self.state.withLock { state in
            let queued = state.waiters.contains { $0.connection == connection }
            if !queued, state.fits(count, connection: connection, user: user, bound: bound) {
                state.add(count, connection: connection, user: user)
                return .counted
            }
            let number = state.nextNumber
            state.nextNumber &+= 1
            state.waiters.append(
                Waiter(
                    number: number, connection: connection, user: user, count: count, bound: bound,
                    continuation: continuation
                )
            )
            return .waiting(number)
        }
    }

    /// Counts `count` for a sender that cannot wait, within twice the bounds of those that wait; `nil` if beyond
    /// (the caller refuses the send). Returns the counts there were, for the error's text, when refused.
    static func admit(
        _ count: Int,
        connection: ObjectIdentifier,
        user: UInt32?,
        refusingBound: Int
    ) -> (onConnection: Int, ofUser: Int)? {
        Self.state.withLock { state in
            let onConnection = state.counted(connection)
            let ofUser = state.counted(user: user)
            guard onConnection + count <= refusingBound, ofUser + count <= Self.refusingBoundPerUser else {
                return (onConnection, ofUser)
            }
            state.add(count, connection: connection, user: user)
            return nil
        }
    }

    /// Counts `count` descriptors with no bound (the shared memory of a payload, bounded by its bytes instead).
    static func add(_ count: Int, connection: ObjectIdentifier, user: UInt32?) {
        Self.state.withLock { $0.add(count, connection: connection, user: user) }
    }

    /// `count` descriptors are counted no more (sent, closed, or room given back); returns the waiters that now fit,
    /// to resume with `true` once the caller has unlocked.
    static func remove(
        _ count: Int,
        connection: ObjectIdentifier,
        user: UInt32?
    ) -> [UnsafeContinuation<Bool, any Error>] {
        guard count > 0 else { return [] }
        return Self.state.withLock { state in
            state.add(-count, connection: connection, user: user)
            return state.admitWaiters()
        }
    }

    /// The connection stopped sending: its waiters, to resume with `false` (nothing counted); and with them gone,
    /// the others that now fit, to resume with `true`.
    static func connectionStopped(
        _ connection: ObjectIdentifier
    ) -> (stopped: [UnsafeContinuation<Bool, any Error>], admitted: [UnsafeContinuation<Bool, any Error>]) {
        Self.state.withLock { state in
            let stopped = state.waiters.filter { $0.connection == connection }.map(\.continuation)
            guard !stopped.isEmpty else { return ([], []) }
            state.waiters.removeAll { $0.connection == connection }
            return (stopped, state.admitWaiters())
        }
    }

    /// The waiter `number` gave up (its task was cancelled): its continuation, to resume with `CancellationError`,
    /// unless it was resumed already; and the waiters behind it that now fit.
    static func cancel(
        _ number: UInt64
    ) -> (cancelled: UnsafeContinuation<Bool, any Error>?, admitted: [UnsafeContinuation<Bool, any Error>]) {
        Self.state.withLock { state in
            guard let index = state.waiters.firstIndex(where: { $0.number == number }) else { return (nil, []) }
            let waiter = state.waiters.remove(at: index)
            return (waiter.continuation, state.admitWaiters())
        }
    }

    /// Resumes `admitted` with `true` and `stopped` with `false`.
    static func resume(
        admitted: [UnsafeContinuation<Bool, any Error>],
        stopped: [UnsafeContinuation<Bool, any Error>] = []
    ) {
        for waiter in admitted { waiter.resume(returning: true) }
        for waiter in stopped { waiter.resume(returning: false) }
    }
}
