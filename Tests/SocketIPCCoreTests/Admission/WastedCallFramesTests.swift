import Testing

@testable import SocketIPCCore

@Suite("WastedCallFrames: a token bucket of frames that make the other side work for nothing")
struct WastedCallFramesTests {
    @Test("a burst of 1,000 at once, then none until time passes")
    func burst() {
        var wasted = WastedCallFrames()
        let now = ContinuousClock.now
        let allowed = (0..<1_500).filter { _ in wasted.spend(at: now) }.count
        #expect(allowed == WastedCallFrames.burst)
        let oneMore = wasted.spend(at: now)
        #expect(!oneMore)
    }

    @Test("1,000 more each second, up to the burst again and no further")
    func refill() {
        var wasted = WastedCallFrames()
        let start = ContinuousClock.now
        for _ in 0..<WastedCallFrames.burst { _ = wasted.spend(at: start) }
        let oneMore = wasted.spend(at: start)
        #expect(!oneMore)
        let halfSecond = start.advanced(by: .milliseconds(500))
        let afterHalf = (0..<1_000).filter { _ in wasted.spend(at: halfSecond) }.count
        #expect(afterHalf == WastedCallFrames.perSecond / 2)
        // A long pause gives back the burst, not more.
        let later = halfSecond.advanced(by: .seconds(3600))
        let afterAnHour = (0..<5_000).filter { _ in wasted.spend(at: later) }.count
        #expect(afterAnHour == WastedCallFrames.burst)
    }

    @Test("a sustained rate below perSecond is never refused")
    func sustainedHonestRate() {
        var wasted = WastedCallFrames()
        var now = ContinuousClock.now
        // 900 a second, for a minute.
        for _ in 0..<54_000 {
            now = now.advanced(by: .microseconds(1_111))
            let allowed = wasted.spend(at: now)
            #expect(allowed)
        }
    }
}
