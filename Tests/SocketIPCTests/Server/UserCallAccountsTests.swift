import Testing

@testable import SocketIPCCore
@testable import SocketIPCRuntime

/// A server's call accounts by user: one user's connections spend one cancel allowance, and whole accounts nobody
/// holds are forgotten.
@Suite("UserCallAccounts")
struct UserCallAccountsTests {
    @Test("a user's connections share one allowance; another user's is apart")
    func sharedByUser() {
        let allowances = UserCallAccounts()
        let start = ContinuousClock.now
        allowances.clock.set(start)
        let first = allowances.account(for: 1000)
        let second = allowances.account(for: 1000)
        #expect(first === second)
        for _ in 0..<CancelAllowance.perUser.burst { _ = first.spend(at: start) }
        #expect(!second.allowsOpen())
        #expect(allowances.account(for: 1001).allowsOpen())
        #expect(allowances.account(for: nil).allowsOpen())
        // Refilled at 5,000 a second, by the server's clock.
        allowances.clock.set(start.advanced(by: .milliseconds(1)))
        #expect(second.allowsOpen())
    }

    @Test("beyond 64 users, whole allowances that no connection holds are forgotten; spent or held ones are kept")
    func pruned() {
        let allowances = UserCallAccounts()
        let start = ContinuousClock.now
        allowances.clock.set(start)
        let held = allowances.account(for: 1)
        for _ in 0..<10 { _ = allowances.account(for: 2).spend(at: start) }
        for user in 3..<UInt32(UserCallAccounts.pruneThreshold + 1) { _ = allowances.account(for: user) }
        #expect(allowances.count == UserCallAccounts.pruneThreshold)
        _ = allowances.account(for: 10_000)
        // Kept: user 1 (held), user 2 (still owes), and the new one.
        #expect(allowances.count == 3)
        #expect(allowances.account(for: 1) === held)
        // User 2's allowance was kept with its debt: a fresh one would be whole.
        for _ in 0..<(CancelAllowance.perUser.burst - 10) { _ = allowances.account(for: 2).spend(at: start) }
        #expect(!allowances.account(for: 2).allowsOpen())
    }
}
