import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

/// The sizing rule of adaptive busy polling (``BusyPolling/adaptive(maximum:)``), with the clock passed in: times
/// are nanoseconds on a made-up clock, the maximum is 200 µs.
@Suite("Adaptive busy polling: the window", .timeLimit(.minutes(5)), .limitedConcurrency)
struct AdaptivePollWindowTests {
    static let maximum: UInt64 = 200_000

    /// One exchange: the loop writes at `time`, and the peer's message arrives `answerAfter` later; returns the
    /// window the write opened and the time after the exchange.
    static func exchange(
        _ window: inout AdaptivePollWindow,
        at time: UInt64,
        answerAfter: UInt64
    ) -> (polled: UInt64, next: UInt64) {
        let polled = window.armed(at: time, maximum: Self.maximum, wrote: true)
        if polled > 0, answerAfter > polled { window.pollMissed() }
        window.messageArrived(at: time + answerAfter)
        return (polled, time + answerAfter + 1_000)
    }

    @Test("a new loop does not poll")
    func startsClosed() {
        var window = AdaptivePollWindow()
        #expect(window.armed(at: 1_000, maximum: Self.maximum, wrote: true) == 0)
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
        // The poll reaches the maximum after this first write since the last message.
        #expect(window.armed(at: time, maximum: Self.maximum, wrote: true) == Self.maximum)
        // A smaller maximum asked for later bounds the poll at once, counted from that write (1 ns ago).
        #expect(window.armed(at: time + 1, maximum: 50_000, wrote: true) == 50_000 - 1)
    }

    @Test("one answer later than the maximum halves the window instead of closing it (KVM's shrink of 2)")
    func oneLateAnswerHalves() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<8 { time = Self.exchange(&window, at: time, answerAfter: 150_000).next }
        #expect(window.window == 160_000)
        // One slow moment: the answer takes 3 ms.
        time = Self.exchange(&window, at: time, answerAfter: 3_000_000).next
        #expect(window.window == 80_000)
        // The next answers, back at 30 µs, are caught by the halved window at once.
        let (polled, _) = Self.exchange(&window, at: time, answerAfter: 30_000)
        #expect(polled == 80_000)
        #expect(window.window == 80_000)
    }

    @Test("traffic slower than the maximum closes the window after a few messages, and it stays closed")
    func sparseTrafficCloses() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<8 { time = Self.exchange(&window, at: time, answerAfter: 190_000).next }
        #expect(window.window == Self.maximum)
        // Now the peer answers only after a millisecond, then after a second.
        var opened: [UInt64] = []
        for answerAfter: UInt64 in [1_000_000, 1_000_000, 1_000_000, 1_000_000, 1_000_000_000, 1_000_000_000] {
            let (polled, next) = Self.exchange(&window, at: time, answerAfter: answerAfter)
            opened.append(polled)
            time = next
        }
        #expect(opened == [200_000, 100_000, 50_000, 25_000, 12_500, 0])
        #expect(window.window == 0)
        // Closed: a write after a long silence does not poll.
        time += 60_000_000_000
        #expect(window.armed(at: time, maximum: Self.maximum, wrote: true) == 0)
        window.messageArrived(at: time + 5_000_000)
        #expect(window.window == 0)
    }

    @Test("a writer whose peer does not answer: polls in vain halve the window down to zero")
    func oneWayWriterStops() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<6 { time = Self.exchange(&window, at: time, answerAfter: 15_000).next }
        #expect(window.window == 20_000)
        // Now only writes, 1 µs apart: each poll misses and the next write halves the window.
        var opened: [UInt64] = []
        for _ in 0..<4 {
            let polled = window.armed(at: time, maximum: Self.maximum, wrote: true)
            opened.append(polled)
            if polled > 0 { window.pollMissed() }
            time += polled + 1_000
        }
        #expect(opened == [20_000, 10_000, 0, 0])
        #expect(window.window == 0)
    }

    @Test("polling ends at most the maximum after the first write since the last message, however many follow")
    func boundedByTheFirstWrite() {
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        for _ in 0..<8 { time = Self.exchange(&window, at: time, answerAfter: 190_000).next }
        #expect(window.window == Self.maximum)
        // Writes every 10 µs from `time` on, with no message, each poll ended early by other work (no miss): each
        // poll reaches only up to 200 µs after the first of them.
        var polledUntil: [UInt64] = []
        var now = time
        for _ in 0..<30 {
            let polled = window.armed(at: now, maximum: Self.maximum, wrote: true)
            if polled > 0 { polledUntil.append(now + polled) }
            now += 10_000
        }
        #expect(polledUntil.allSatisfy { $0 <= time + Self.maximum })
        #expect(polledUntil.count == 20)
    }

    @Test("a client that thinks before each request: its poll after the request still waits the whole window")
    func thinkTime() {
        // The reply arrives, the read ends with an arm that writes nothing, the next request is written 120 µs later,
        // and its reply takes 100 µs: 220 µs from message to message, more than the maximum.
        var window = AdaptivePollWindow()
        var time: UInt64 = 1_000_000
        var caught: [Bool] = []
        for _ in 0..<12 {
            window.messageArrived(at: time)
            // The read's own poll passes before the request is written: in vain, but not for a write's answer.
            let afterRead = window.armed(at: time, maximum: Self.maximum, wrote: false)
            if afterRead > 0 && afterRead < 120_000 { window.pollMissed() }
            let request = time + 120_000
            let polled = window.armed(at: request, maximum: Self.maximum, wrote: true)
            caught.append(polled >= 100_000)
            if polled < 100_000 && polled > 0 { window.pollMissed() }
            time = request + 100_000
        }
        // It grows from 10 µs to 160 µs, then every reply is caught by the poll after its request.
        #expect(caught.suffix(6).allSatisfy { $0 }, "\(caught)")
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
