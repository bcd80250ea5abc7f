import Synchronization

/// The bytes of frames not yet received whole that each user's connections to a server hold, across them
/// (``ServerConfiguration/maximumIncomingBytesPerUser``); peers whose credentials are unknown share one count.
///
/// Each connection may gather a frame of up to the maximum message size, so without this one user's connections
/// could make a server hold that many times its connections (a review: 300 connections that each sent all of a
/// 16 MB request but its last byte took a server to 4.6 GB, and the defaults allowed 16 GiB per user). D-Bus bounds
/// the bytes a connection has queued unread (`max_incoming_bytes`); this bounds them per user as well.
final class UserIncomingBytes: Sendable {
    /// The most one user's connections may hold.
    let limit: Int
    private let held = Mutex<[UInt32?: Int]>([:])

    init(limit: Int) {
        self.limit = limit
    }

    /// Charges `bytes` more to `user` if they fit: within ``limit``, or the user holds nothing yet (one frame alone,
    /// bounded by the maximum message size, always fits).
    /// - Returns: Whether they were charged.
    func take(_ bytes: Int, user: UInt32?) -> Bool {
        self.held.withLock { held in
            let current = held[user, default: 0]
            guard current == 0 || current + bytes <= self.limit else { return false }
            held[user] = current + bytes
            return true
        }
    }

    /// Gives back `bytes` that ``take(_:user:)`` charged to `user`.
    func give(_ bytes: Int, user: UInt32?) {
        guard bytes > 0 else { return }
        self.held.withLock { held in
            let left = held[user, default: 0] - bytes
            held[user] = left > 0 ? left : nil
        }
    }

    /// What `user`'s connections hold now.
    func held(by user: UInt32?) -> Int {
        self.held.withLock { $0[user, default: 0] }
    }

    /// Why a connection of `user` is closed: `size` more bytes would take the user over ``limit``.
    func refusal(of size: Int, user: UInt32?) -> SocketIPCError {
        SocketIPCError(
            .resourceExhausted,
            "this user's connections already hold \(self.held(by: user)) bytes of messages not yet received whole or "
                + "not yet taken by their handlers, and this one \(size) more; the server takes at most \(self.limit) "
                + "(ServerConfiguration.maximumIncomingBytesPerUser)"
        )
    }
}

/// One connection's share of its server's ``UserIncomingBytes``: what it has charged for the bytes it keeps of a
/// frame not yet whole, adjusted after each read (``ConnectionChannelHandler``). Only a frame of which more than
/// ``threshold`` bytes are kept is charged, so that the common read, which ends on a frame boundary or keeps a few
/// bytes, costs nothing.
struct IncomingBytesCharge {
    /// The server's account.
    let accounts: UserIncomingBytes
    /// The peer's user.
    let user: UInt32?
    /// What this connection has charged.
    private(set) var charged = 0

    /// Bytes kept below which nothing is charged: 64 KiB.
    static var threshold: Int { 64 * 1024 }

    init(accounts: UserIncomingBytes, user: UInt32?) {
        self.accounts = accounts
        self.user = user
    }

    /// Charges what the connection keeps now, `kept` bytes, instead of what it charged before.
    /// - Returns: `false` when the user's account cannot take the growth (nothing is charged then).
    mutating func keep(_ kept: Int) -> Bool {
        let wanted = kept > Self.threshold ? kept : 0
        if wanted == self.charged { return true }
        if wanted < self.charged {
            self.accounts.give(self.charged - wanted, user: self.user)
            self.charged = wanted
            return true
        }
        guard self.accounts.take(wanted - self.charged, user: self.user) else { return false }
        self.charged = wanted
        return true
    }

    /// Gives back everything charged (the connection closed).
    mutating func release() {
        self.accounts.give(self.charged, user: self.user)
        self.charged = 0
    }
}
