import Testing

@testable import SocketIPCCore

@Suite("CancelAllowance: how fast a peer may cancel its calls")
struct CancelAllowanceTests {
    @Test("a new connection may cancel 200 calls at once; with the 200th, no open until time passes")
    func initialAllowance() {
        var allowance = CancelAllowance()
        let now = ContinuousClock.now
        for _ in 0..<(CancelAllowance.perConnection.burst - 1) { _ = allowance.spend(at: now) }
        let allowed1 = allowance.allowsOpen(at: now)
        #expect(allowed1)
        _ = allowance.spend(at: now)
        let allowed2 = allowance.allowsOpen(at: now)
        #expect(!allowed2)
        // 1,000 a second: one more after a millisecond and a bit.
        let allowed3 = allowance.allowsOpen(at: now.advanced(by: .microseconds(1_100)))
        #expect(allowed3)
    }

    @Test("the allowance grows to 200 with time and no further; owing a whole burst holds the peer's frames until it owes none")
    func burstAndDebt() throws {
        var allowance = CancelAllowance()
        let start = ContinuousClock.now
        _ = allowance.allowsOpen(at: start)
        let later = start.advanced(by: .seconds(3600))
        for _ in 0..<(CancelAllowance.perConnection.burst - 1) { _ = allowance.spend(at: later) }
        let allowed4 = allowance.allowsOpen(at: later)
        #expect(allowed4)
        _ = allowance.spend(at: later)
        let allowed5 = allowance.allowsOpen(at: later)
        #expect(!allowed5)
        // A peer that goes on cancelling (the calls it was refused) until it owes a whole burst is read no further
        // until it owes none: 0.2 s at 1,000 a second.
        let owing = (0..<(CancelAllowance.perConnection.burst - 1)).map { _ in allowance.spend(at: later) }
        #expect(owing.allSatisfy { $0 == nil })
        let held = allowance.spend(at: later)
        let wait = try #require(held)
        #expect(wait > .milliseconds(199) && wait <= .milliseconds(201), "\(wait)")
        let stillOwing = allowance.allowsOpen(at: later.advanced(by: wait - .milliseconds(2)))
        #expect(!stillOwing)
        let afterwards = allowance.allowsOpen(at: later.advanced(by: wait + .milliseconds(2)))
        #expect(afterwards)
    }

    @Test("a steady 900 cancels a second never refuses an open")
    func steadyRate() {
        var allowance = CancelAllowance()
        var now = ContinuousClock.now
        var refused = 0
        for _ in 0..<27_000 {
            now = now.advanced(by: .microseconds(1_111))
            if !allowance.allowsOpen(at: now) { refused += 1 }
            _ = allowance.spend(at: now)
        }
        #expect(refused == 0)
    }

    @Test("a user's allowance across connections holds 1,000 and refills at 5,000 a second; whole again, it can be forgotten")
    func perUser() throws {
        var allowance = CancelAllowance(CancelAllowance.perUser)
        let now = ContinuousClock.now
        #expect(allowance.isFull(at: now))
        for _ in 0..<999 { _ = allowance.spend(at: now) }
        let allowed = allowance.allowsOpen(at: now)
        #expect(allowed)
        _ = allowance.spend(at: now)
        let refused = allowance.allowsOpen(at: now)
        #expect(!refused)
        #expect(!allowance.isFull(at: now.advanced(by: .milliseconds(199))))
        // 1,000 cancels at 5,000 a second: whole after 0.2 s.
        #expect(allowance.isFull(at: now.advanced(by: .milliseconds(201))))
        let owing = (0..<999).map { _ in allowance.spend(at: now) }
        #expect(owing.allSatisfy { $0 == nil })
        let held = allowance.spend(at: now)
        let wait = try #require(held)
        #expect(wait > .milliseconds(199) && wait <= .milliseconds(201), "\(wait)")
    }

    @Test("while any allowance is left, an open does not read the clock")
    func openWithoutClock() {
        var allowance = CancelAllowance()
        var reads = 0
        func now() -> ContinuousClock.Instant {
            reads += 1
            return .now
        }
        for _ in 0..<10 { _ = allowance.allowsOpen(at: now()) }
        #expect(reads == 0)
        let start = ContinuousClock.now
        for _ in 0..<CancelAllowance.perConnection.burst { _ = allowance.spend(at: start) }
        _ = allowance.allowsOpen(at: now())
        #expect(reads == 1)
    }
}
