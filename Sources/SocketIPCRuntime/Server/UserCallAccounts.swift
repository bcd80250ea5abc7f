import SocketIPCCore
import Synchronization

/// A server's call accounts by user (``UserCallAccount``): each connection spends its peer's user's cancel allowance
/// (``CancelAllowance/perUser``) as well as its own, so that a peer that connects anew after every burst of calls
/// opened and cancelled (Rapid Reset, CVE-2023-44487) does not get the allowance back, and counts its calls in
/// progress against the user's; peers whose credentials are unknown share one account.
///
/// An account is forgotten once its allowance is whole again, no call of it is in progress and no connection holds
/// it (a new one starts so), looked for when more than ``pruneThreshold`` users are kept: the table holds at most the
/// users that cancelled too fast lately, or have connections.
final class UserCallAccounts: Sendable {
    /// The clock of every cancel allowance of the server.
    let clock = CancelClock()
    private let users = Mutex<[UInt32?: UserCallAccount]>([:])
    /// How many users are kept before accounts nobody holds, whole and without calls, are forgotten.
    static var pruneThreshold: Int { 64 }
    /// The most version-1 requests of one user in progress (``ServerConfiguration/maximumConcurrentRequestsPerUser``).
    let requestLimit: Int

    init(requestLimit: Int = .max) {
        self.requestLimit = requestLimit
    }

    /// The account of `user` (`nil`: credentials unknown), made whole if there is none.
    func account(for user: UInt32?) -> UserCallAccount {
        self.users.withLock { users in
            if let allowance = users[user] { return allowance }
            if users.count >= Self.pruneThreshold {
                let now = self.clock.now()
                for key in Array(users.keys)
                where isKnownUniquelyReferenced(&users[key]!) && users[key]!.isFull(at: now) {
                    users[key] = nil
                }
            }
            let allowance = UserCallAccount(CancelAllowance.perUser, clock: self.clock, requestLimit: self.requestLimit)
            users[user] = allowance
            return allowance
        }
    }

    /// How many users' accounts are kept.
    var count: Int { self.users.withLock { $0.count } }
}
