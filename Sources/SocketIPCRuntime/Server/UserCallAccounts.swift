import SocketIPCCore
import Synchronization

/// A server's cancel allowances by user (``CancelAllowance/perUser``): each connection spends its peer's user's
/// allowance as well as its own, so that a peer that connects anew after every burst of calls opened and cancelled
/// (Rapid Reset, CVE-2023-44487) does not get the allowance back; peers whose credentials are unknown share one.
///
/// An allowance is forgotten once it is whole again and no connection holds it (a new one starts whole), looked for
/// when more than ``pruneThreshold`` users are kept: the table holds at most the users that cancelled too fast
/// lately, or have connections.
final class UserCancelAllowances: Sendable {
    /// The clock of every allowance of the server.
    let clock = CancelClock()
    private let users = Mutex<[UInt32?: SharedCancelAllowance]>([:])
    /// How many users are kept before whole allowances nobody holds are forgotten.
    static var pruneThreshold: Int { 64 }

    init() {}

    /// The allowance of `user` (`nil`: credentials unknown), made whole if there is none.
    func allowance(for user: UInt32?) -> SharedCancelAllowance {
        self.users.withLock { users in
            if let allowance = users[user] { return allowance }
            if users.count >= Self.pruneThreshold {
                let now = self.clock.now()
                for key in Array(users.keys)
                where isKnownUniquelyReferenced(&users[key]!) && users[key]!.isFull(at: now) {
                    users[key] = nil
                }
            }
            let allowance = SharedCancelAllowance(CancelAllowance.perUser, clock: self.clock)
            users[user] = allowance
            return allowance
        }
    }

    /// How many users' allowances are kept.
    var count: Int { self.users.withLock { $0.count } }
}
