/// How fast a peer may cancel the calls it opened before this side refuses the peer's new calls for a while: a token
/// bucket that holds ``Rate/burst`` cancels, starts full, and is refilled at ``Rate/perSecond``. A value without I/O;
/// the clock is passed in.
///
/// A call opened and cancelled at once, again and again, is HTTP/2's "Rapid Reset" (CVE-2023-44487): the
/// concurrency limit holds (a cancelled call keeps its slot until its handler has ended), but every pair starts and
/// stops a handler, and costs the peer nothing it must read. nghttp2 counts such resets in a token bucket (a burst of
/// 1,000, 33 a second) and closes the connection beyond it. Here the connection is neither closed nor slowed down,
/// since cancels are honest too (deadlines shorter than a slow handler, task groups cancelled with their calls, loops
/// that leave a stream early), and two reviews hurt honest clients with either: while the allowance is spent, the
/// peer's new calls are refused at once with `resourceExhausted` (no handler starts), as beyond the concurrency
/// limit, and everything else on the connection goes on. Only a cancel that stops a running handler is counted: one
/// of a call that was refused or is over stops nothing (a review's honest client, counted for those, was read no
/// further for seconds). A peer that still owes a whole burst is read no further until it owes none (``spend(at:)``).
///
/// A server keeps two for each connection: the connection's own (``perConnection``), and one its peer's user shares
/// across all of its connections to the server (``perUser``), so that connecting anew does not bring the allowance
/// back.
package struct CancelAllowance {
    /// How many cancels an allowance holds and how fast it refills.
    package struct Rate: Equatable, Sendable, CustomStringConvertible {
        /// How many cancels the allowance holds, and starts with.
        package var burst: Int
        /// How many come back each second.
        package var perSecond: Int

        package var description: String { "\(self.burst) at once, \(self.perSecond) a second" }
    }

    /// A connection's: 200 at once (twice the calls a connection may have in progress by default, all of which a
    /// client may cancel as soon as it has made them), 1,000 a second.
    package static let perConnection = Rate(burst: 200, perSecond: 1_000)
    /// One user's, across all of its connections to a server: 1,000 at once (the burst of five connections), 5,000 a
    /// second.
    package static let perUser = Rate(burst: 1_000, perSecond: 5_000)

    /// The allowance's size and refill.
    package let rate: Rate
    /// What is left of the allowance, in cancels (fractions accrue with time); below zero after more cancels than it
    /// held.
    private var allowance: Double
    /// When the allowance was last brought up to date.
    private var updated: ContinuousClock.Instant?

    /// Starts full, with `rate.burst` cancels.
    package init(_ rate: Rate = Self.perConnection) {
        self.rate = rate
        self.allowance = Double(rate.burst)
    }

    /// Counts one cancel at `now`.
    /// - Returns: `nil`, or, once the peer owes a whole ``Rate/burst`` of cancels, how long until it owes none: this
    ///   side then reads none of its frames meanwhile. A peer rarely gets there: once its new calls are refused it
    ///   has no more handlers to stop than those it had running (at most 100 a connection by default), and the cancels
    ///   of refused calls are not counted (the caller counts only cancels that stop a handler).
    package mutating func spend(at now: ContinuousClock.Instant) -> Duration? {
        self.refill(at: now)
        self.allowance -= 1
        guard self.allowance <= -Double(self.rate.burst) else { return nil }
        return .nanoseconds(Int64(-self.allowance / Double(self.rate.perSecond) * 1e9) + 1)
    }

    /// Whether the peer may open a call at `now`: whether any of the allowance is left. The clock is read only when
    /// none was left at the last count (what is left only grows with time).
    package mutating func allowsOpen(at now: @autoclosure () -> ContinuousClock.Instant) -> Bool {
        if self.allowance > 0 { return true }
        self.refill(at: now())
        return self.allowance > 0
    }

    /// Whether the allowance is whole again at `now`: one that is can be forgotten, since a new one starts whole.
    package func isFull(at now: ContinuousClock.Instant) -> Bool {
        var copy = self
        copy.refill(at: now)
        return copy.allowance >= Double(self.rate.burst)
    }

    private mutating func refill(at now: ContinuousClock.Instant) {
        if let updated, self.allowance < Double(self.rate.burst) {
            let elapsed = updated.duration(to: now)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            self.allowance = min(Double(self.rate.burst), self.allowance + max(0, seconds) * Double(self.rate.perSecond))
        }
        self.updated = now
    }
}
