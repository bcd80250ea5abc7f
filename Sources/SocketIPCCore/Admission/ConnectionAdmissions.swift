import NIOCore

/// The server's count of its connections, by user, against its limits: which new connection is admitted, which
/// waits, and which is refused. A value without I/O; the server keeps it in its ``ServerStateMachine`` (whose
/// `SocketIPCRuntime` SPI it shares: the machine's inlinable events use it).
///
/// - At most `maximumConnections` connections in all, and `maximumConnectionsPerUser` of one user id: a connection
///   beyond either is refused (D-Bus's `max_completed_connections` and `max_connections_per_user`).
/// - At most `maximumPendingHandshakesPerUser` of one user's connections may be handshaking (accepted, hello or
///   EOF-style message not yet in). A connection beyond it is *parked*: accepted but not read from, until one of the
///   same user's handshakes ends (completed, timed out or closed). A burst of honest connections is then served in
///   turn instead of refused, while one user's silent connections hold only that user's slots. Parked connections
///   count against the connection limits, and their handshake time counts from when they were accepted
///   (``expireParked(_:)``).
@_spi(SocketIPCRuntime) public struct ConnectionAdmissions {
    /// A user id, or `nil` for peers whose credentials are unknown (they share one count).
    public typealias User = UInt32?

    /// An accepted connection waiting for one of its user's handshakes to end.
    public struct Parked: Equatable, Sendable {
        public var id: UInt64
        public var descriptor: Int32
        public var peer: PeerCredentials?
        /// When its handshake time is up, counted from when it was accepted.
        public var handshakeDeadline: NIODeadline = .distantFuture
    }

    /// Why a new connection is closed at once.
    public enum Refusal: Equatable, Sendable, CustomStringConvertible {
        case maximumConnections, maximumConnectionsPerUser

        public var description: String {
            switch self {
            case .maximumConnections: "the server is at maximumConnections"
            case .maximumConnectionsPerUser: "the peer's user is at maximumConnectionsPerUser"
            }
        }
    }

    /// What to do with a new connection.
    public enum Decision: Equatable, Sendable {
        /// Serve it now; it counts as handshaking.
        case admitted
        /// Keep it unread until ``handshakeEnded(_:)`` or ``closed(_:)`` hands it back.
        case parked
        /// Close it.
        case refused(Refusal)
    }

    private struct Entry {
        var user: User
        var handshaking: Bool
    }

    private struct UserCount {
        var open = 0
        var handshaking = 0
        var parked: [Parked] = []
    }

    public private(set) var maximumConnections: Int
    public private(set) var maximumConnectionsPerUser: Int
    public let maximumPendingHandshakesPerUser: Int
    private var entries: [UInt64: Entry] = [:]
    private var users: [User: UserCount] = [:]

    public init(maximumConnections: Int, maximumConnectionsPerUser: Int, maximumPendingHandshakesPerUser: Int) {
        self.maximumConnections = maximumConnections
        self.maximumConnectionsPerUser = maximumConnectionsPerUser
        self.maximumPendingHandshakesPerUser = maximumPendingHandshakesPerUser
    }

    /// Lowers the connection limits to `connections` in all, and half of them for one user, if they are higher: what
    /// the process's descriptors (or, with descriptor passing, its threads) can hold.
    /// - Returns: Whether the limits were lowered.
    public mutating func fit(toHold connections: Int) -> Bool {
        guard connections < self.maximumConnections else { return false }
        self.maximumConnections = connections
        self.maximumConnectionsPerUser = min(self.maximumConnectionsPerUser, max(1, connections / 2))
        return true
    }

    /// Connections counted: served, handshaking and parked.
    public var count: Int { self.entries.count }

    /// Counts a new connection of `peer`'s user.
    /// - Parameter handshaking: Whether it is to count as handshaking (a connection that is only told it is
    ///   refused does not); one that is not is never parked.
    /// - Parameter handshakeDeadline: When the connection's handshake time is up, kept for a parked connection.
    public mutating func admit(
        _ id: UInt64,
        descriptor: Int32,
        peer: PeerCredentials?,
        handshaking: Bool = true,
        handshakeDeadline: NIODeadline = .distantFuture
    ) -> Decision {
        guard self.entries.count < self.maximumConnections else { return .refused(.maximumConnections) }
        let user = peer?.userID
        var count = self.users[user] ?? UserCount()
        guard count.open < self.maximumConnectionsPerUser else { return .refused(.maximumConnectionsPerUser) }
        count.open += 1
        defer { self.users[user] = count }
        guard handshaking else {
            self.entries[id] = Entry(user: user, handshaking: false)
            return .admitted
        }
        guard count.handshaking < self.maximumPendingHandshakesPerUser else {
            count.parked.append(Parked(id: id, descriptor: descriptor, peer: peer, handshakeDeadline: handshakeDeadline))
            self.entries[id] = Entry(user: user, handshaking: false)
            return .parked
        }
        count.handshaking += 1
        self.entries[id] = Entry(user: user, handshaking: true)
        return .admitted
    }

    /// A connection finished its handshake: it stops counting as handshaking.
    /// - Returns: A parked connection of the same user to serve now, if one waits.
    public mutating func handshakeEnded(_ id: UInt64) -> Parked? {
        guard var entry = self.entries[id], entry.handshaking else { return nil }
        entry.handshaking = false
        self.entries[id] = entry
        self.users[entry.user]!.handshaking -= 1
        return self.unpark(entry.user)
    }

    /// A connection closed (or a parked one was closed unserved); calls for an id not counted do nothing.
    /// - Returns: Whether it was counted, and a parked connection of the same user to serve now, if one waits.
    public mutating func closed(_ id: UInt64) -> (wasCounted: Bool, next: Parked?) {
        guard let entry = self.entries.removeValue(forKey: id) else { return (false, nil) }
        var count = self.users[entry.user]!
        count.open -= 1
        if entry.handshaking { count.handshaking -= 1 }
        count.parked.removeAll { $0.id == id }
        self.users[entry.user] = count.open == 0 ? nil : count
        return (true, entry.handshaking ? self.unpark(entry.user) : nil)
    }

    /// Forgets a connection that is still parked when its handshake time is up (it counts from when it was
    /// accepted, so waiting in the park does not extend it).
    /// - Returns: The connection, to close; `nil` if it is not parked (any more).
    public mutating func expireParked(_ id: UInt64) -> Parked? {
        guard let entry = self.entries[id], !entry.handshaking,
            let index = self.users[entry.user]?.parked.firstIndex(where: { $0.id == id })
        else { return nil }
        let parked = self.users[entry.user]!.parked.remove(at: index)
        self.entries[id] = nil
        self.users[entry.user]!.open -= 1
        if self.users[entry.user]!.open == 0 { self.users[entry.user] = nil }
        return parked
    }

    /// Every parked connection, for a server that shuts down; they stay counted until ``closed(_:)``.
    public mutating func takeAllParked() -> [Parked] {
        var all: [Parked] = []
        for user in self.users.keys where !self.users[user]!.parked.isEmpty {
            all += self.users[user]!.parked
            self.users[user]!.parked = []
        }
        return all
    }

    private mutating func unpark(_ user: User) -> Parked? {
        guard var count = self.users[user], !count.parked.isEmpty,
            count.handshaking < self.maximumPendingHandshakesPerUser
        else { return nil }
        let next = count.parked.removeFirst()
        count.handshaking += 1
        self.users[user] = count
        self.entries[next.id]!.handshaking = true
        return next
    }
}
