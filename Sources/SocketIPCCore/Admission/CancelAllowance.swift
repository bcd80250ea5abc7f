/// How fast a peer may cancel the calls it opened on a connection before this side reads its frames more slowly: a
/// token bucket of ``burst`` cancels, refilled at ``perSecond``. A value without I/O; the clock is passed in.
///
/// A call opened and cancelled at once, again and again, is HTTP/2's "Rapid Reset" (CVE-2023-44487): the
/// concurrency limit holds (a cancelled call keeps its slot until its handler has ended), but every pair starts and
/// stops a handler, and costs the peer nothing it must read. nghttp2 counts such resets in a token bucket (a burst of
/// 1,000, 33 a second) and closes the connection beyond it; here the connection is not closed, since cancels are
/// honest too (deadlines shorter than a slow handler, task groups cancelled with their calls, loops that leave a
/// stream early), and a review closed honest clients with such a limit. Beyond the allowance this side stops handing
/// out the peer's frames until cancels are due again (``spend(at:)``), so an honest peer that cancels that much is
/// slowed down, and an attacker's pairs are paced at ``perSecond``.
package struct CancelAllowance {
    /// How many cancels a peer may send at once: twice the calls a connection may have in progress by default.
    package static let burst = 200
    /// How many more each second, on average.
    package static let perSecond = 1_000
    /// How many cancels are due again before the peer's frames are handed out again, once held back: 10, so that a
    /// peer that keeps cancelling wakes this side about 100 times a second, not 1,000.
    package static let dueBeforeResuming = 10

    /// What is left of the allowance, in cancels (fractions accrue with time).
    private var allowance = Double(Self.burst)
    /// When the allowance was last brought up to date.
    private var updated: ContinuousClock.Instant?

    /// Starts with the whole burst.
    package init() {}

    /// Counts one cancel at `now`.
    /// - Returns: `nil` while the allowance lasts; once it is spent, how long until ``dueBeforeResuming`` cancels
    ///   are due again (the cancel is still counted, as the receiver has read it).
    package mutating func spend(at now: ContinuousClock.Instant) -> Duration? {
        if let updated {
            let elapsed = updated.duration(to: now)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            self.allowance = min(Double(Self.burst), self.allowance + max(0, seconds) * Double(Self.perSecond))
        }
        self.updated = now
        self.allowance -= 1
        guard self.allowance < 0 else { return nil }
        let missing = Double(Self.dueBeforeResuming) - self.allowance
        return .nanoseconds(Int64(missing / Double(Self.perSecond) * 1e9) + 1)
    }
}
