import Testing

@testable import SocketIPCCore

@Suite("CancelAllowance: how fast a peer may cancel its calls")
struct CancelAllowanceTests {
    @Test("a burst of 200 at once; beyond it, the wait until 10 are due again: 11 ms, then 12 ms")
    func burst() {
        var allowance = CancelAllowance()
        let now = ContinuousClock.now
        let waits = (0..<CancelAllowance.burst).map { _ in allowance.spend(at: now) }
        #expect(waits.allSatisfy { $0 == nil })
        let first = allowance.spend(at: now)
        let second = allowance.spend(at: now)
        #expect(first.map { $0 > .microseconds(10_990) && $0 <= .microseconds(11_010) } == true, "\(String(describing: first))")
        #expect(second.map { $0 > .microseconds(11_990) && $0 <= .microseconds(12_010) } == true, "\(String(describing: second))")
    }

    @Test("1,000 a second come back with time, up to the burst and no further")
    func refill() {
        var allowance = CancelAllowance()
        let start = ContinuousClock.now
        for _ in 0..<CancelAllowance.burst { _ = allowance.spend(at: start) }
        let halfSecond = start.advanced(by: .milliseconds(100))
        let allowed = (0..<300).prefix { _ in allowance.spend(at: halfSecond) == nil }.count
        #expect(allowed == CancelAllowance.perSecond / 10)
        let later = halfSecond.advanced(by: .seconds(3600))
        let afterAnHour = (0..<1_000).prefix { _ in allowance.spend(at: later) == nil }.count
        #expect(afterAnHour == CancelAllowance.burst)
    }

    @Test("a steady 900 a second is never held back")
    func steadyRate() {
        var allowance = CancelAllowance()
        var now = ContinuousClock.now
        var held = 0
        for _ in 0..<27_000 {
            now = now.advanced(by: .microseconds(1_111))
            if allowance.spend(at: now) != nil { held += 1 }
        }
        #expect(held == 0)
    }
}
