import Synchronization

/// Bytes each user may have held at once, by uid: what `serve --exec` keeps of one user's requests while they wait
/// for their turn or run, so that one user's many connections cannot fill the server's memory (each connection alone
/// is bounded by its unanswered requests; a review's 200 connections of one user, each with 100 requests of 65,000
/// bytes waiting, took the server from 33 MB to 1.43 GB).
final class UserByteBudget: Sendable {
    /// The most bytes one user may hold at once.
    let limit: Int
    /// What each item counts at least, whatever its size (what keeping it costs besides its bytes).
    let minimum: Int
    private let held = Mutex<[UInt32: Int]>([:])

    /// A budget of `limit` bytes per user, each item counted as at least `minimum`.
    init(limit: Int, minimum: Int) {
        self.limit = limit
        self.minimum = minimum
    }

    /// Charges `bytes` (at least ``minimum``) to `user` (`nil`: a peer without credentials, which all share one
    /// budget) if it fits; one item alone always fits. Returns what was charged, to give back, or `nil`.
    func take(_ bytes: Int, user: UInt32?) -> Int? {
        let user = user ?? .max
        let charge = max(bytes, self.minimum)
        return self.held.withLock { held in
            let current = held[user, default: 0]
            guard current == 0 || current + charge <= self.limit else { return nil }
            held[user] = current + charge
            return charge
        }
    }

    /// Charges `bytes` to `user` whether or not they fit: what is already held and must be counted (a command's
    /// output waiting to be read). Returns what was charged, to give back.
    func charge(_ bytes: Int, user: UInt32?) -> Int {
        let user = user ?? .max
        self.held.withLock { $0[user, default: 0] += bytes }
        return bytes
    }

    /// Whether `user` holds more than ``limit`` (possible only through ``charge(_:user:)``).
    func isOver(user: UInt32?) -> Bool {
        self.held.withLock { $0[user ?? .max, default: 0] > self.limit }
    }

    /// Gives back `charge` that ``take(_:user:)`` charged to `user`.
    func give(_ charge: Int, user: UInt32?) {
        let user = user ?? .max
        self.held.withLock { held in
            let left = held[user, default: 0] - charge
            held[user] = left > 0 ? left : nil
        }
    }
}
