/// How fast a peer may cancel the calls it opened on a connection before this side refuses the peer's new calls for
/// a while: a token bucket that holds ``burst`` cancels, starts with ``initial`` of them, and is refilled at
/// ``perSecond``. A value without I/O; the clock is passed in.
///
/// A call opened and cancelled at once, again and again, is HTTP/2's "Rapid Reset" (CVE-2023-44487): the
/// concurrency limit holds (a cancelled call keeps its slot until its handler has ended), but every pair starts and
/// stops a handler, and costs the peer nothing it must read. nghttp2 counts such resets in a token bucket (a burst of
/// 1,000, 33 a second) and closes the connection beyond it. Here the connection is neither closed nor slowed down,
/// since cancels are honest too (deadlines shorter than a slow handler, task groups cancelled with their calls, loops
/// that leave a stream early), and two reviews hurt honest clients with either: while the allowance is spent, the
/// peer's new calls are refused at once with `resourceExhausted` (no handler starts), as beyond the concurrency
/// limit, and everything else on the connection goes on. A peer that still cancels until it owes a whole burst (it
/// cancels calls that were refused) is read no further until it owes none (``spend(at:)``). A new connection starts
/// with the whole allowance: an attacker that connects anew gets it again, at the cost of a handshake, and as many
/// connections at once as its user may have.
package struct CancelAllowance {
    /// How many cancels the allowance holds: twice the calls a connection may have in progress by default.
    package static let burst = 200
    /// How many a new connection starts with: all of them, since a client may cancel its calls as soon as it has made
    /// them.
    package static let initial = burst
    /// How many come back each second.
    package static let perSecond = 1_000

    /// What is left of the allowance, in cancels (fractions accrue with time); below zero after more cancels than it
    /// held.
    private var allowance = Double(Self.initial)
    /// When the allowance was last brought up to date.
    private var updated: ContinuousClock.Instant?

    /// Starts with ``initial`` cancels.
    package init() {}

    /// Counts one cancel at `now`.
    /// - Returns: `nil`, or, once the peer owes a whole ``burst`` of cancels, how long until it owes none: this side
    ///   then reads none of its frames meanwhile. An honest peer never gets there: once its new calls are refused it
    ///   has no more calls to cancel than those it had open (at most 100 by default), while a peer that goes on
    ///   cancelling calls it was refused, as an attacker's pipelined pairs do, is paced at ``perSecond``.
    package mutating func spend(at now: ContinuousClock.Instant) -> Duration? {
        self.refill(at: now)
        self.allowance -= 1
        guard self.allowance <= -Double(Self.burst) else { return nil }
        return .nanoseconds(Int64(-self.allowance / Double(Self.perSecond) * 1e9) + 1)
    }

    /// Whether the peer may open a call at `now`: whether any of the allowance is left.
    package mutating func allowsOpen(at now: ContinuousClock.Instant) -> Bool {
        self.refill(at: now)
        return self.allowance > 0
    }

    private mutating func refill(at now: ContinuousClock.Instant) {
        if let updated {
            let elapsed = updated.duration(to: now)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            self.allowance = min(Double(Self.burst), self.allowance + max(0, seconds) * Double(Self.perSecond))
        }
        self.updated = now
    }
}
