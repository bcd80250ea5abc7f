import Testing

@testable import SocketIPCRuntime

/// The sizing rule of adaptive busy polling (``BusyPolling/adaptive(maximum:)``), with the clock passed in: times
/// are nanoseconds on a made-up clock, the maximum is 200 µs.
@Suite("Adaptive busy polling: the window")
struct AdaptivePollWindowTests {
    static let maximum: UInt64 = 200_000

    /// One exchange: the loop writes at `time`, and the peer's message arrives `answerAfter` later; returns the
    /// window the write opened and the time after the exchange.
    static func exchange(
        _ window: inout AdaptivePollWindow,
        at time: UInt64,
        answerAfter: UInt64
    ) -> (polled: UInt64, next: UInt64) {
        let polled = window.armed(at: time, maximum: Self.maximum)
        if polled > 0, answerAfter > polled { window.pollMissed() }
        window.messageArrived(at: time + answerAfter)
        return (polled, time + answerAfter + 1_000)
    }

    @Test("a new loop does not poll")
    func startsClosed() {
        var window = AdaptivePollWindow()
        #expect(window.armed(at: 1_000, maximum: Self.maximum) == 0)
    }

    @Test("answers within the maximum open the window, doubling from 10 µs up to the time they take")
    func growsToTheTurnaround() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        var opened: [UInt64] = []
        for _ in 0..<8 {
            let (polled, next) = Self.exchange(&window, at: time, answerAfter: 30_000)
            opened.append(polled)
            time = next
        }
        #expect(opened == [0, 10_000, 20_000, 40_000, 40_000, 40_000, 40_000, 40_000])
        #expect(window.window == 40_000)
    }

    @Test("the window never exceeds the maximum")
    func boundedByTheMaximum() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<20 {
            time = Self.exchange(&window, at: time, answerAfter: 190_000).next
        }
        #expect(window.window == Self.maximum)
        #expect(window.armed(at: time, maximum: Self.maximum) == Self.maximum)
        // A smaller maximum asked for later bounds the poll at once.
        #expect(window.armed(at: time + 1, maximum: 50_000) == 50_000)
    }

    @Test("traffic that stops closes the window: the next write after a long silence does not poll")
    func idleCloses() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<6 { time = Self.exchange(&window, at: time, answerAfter: 20_000).next }
        #expect(window.window > 0)
        // The peer answers only after a second.
        time = Self.exchange(&window, at: time, answerAfter: 1_000_000_000).next
        #expect(window.window == 0)
        #expect(window.armed(at: time, maximum: Self.maximum) == 0)
    }

    @Test("a writer whose peer does not answer: polls in vain halve the window down to zero")
    func oneWayWriterStops() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<6 { time = Self.exchange(&window, at: time, answerAfter: 150_000).next }
        #expect(window.window == 160_000)
        // Now only writes: each poll misses and the next write halves the window.
        var opened: [UInt64] = []
        for _ in 0..<6 {
            let polled = window.armed(at: time, maximum: Self.maximum)
            opened.append(polled)
            if polled > 0 { window.pollMissed() }
            time += polled + 5_000
        }
        #expect(opened == [160_000, 80_000, 40_000, 20_000, 10_000, 0])
        #expect(window.window == 0)
    }

    @Test("a message that the window caught keeps the window as it is")
    func caughtKeeps() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<4 { time = Self.exchange(&window, at: time, answerAfter: 35_000).next }
        let before = window.window
        for _ in 0..<10 { time = Self.exchange(&window, at: time, answerAfter: 5_000).next }
        #expect(window.window == before)
    }
}
