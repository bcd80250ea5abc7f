/// A connection's allowance of call frames that make the other side work for nothing: cancels of calls by their
/// caller, zero credit, and cancels or credit for calls that are over or never were. A value without I/O; the clock
/// is passed in.
///
/// Each such frame has an honest use (a caller gives up, a cancel crosses the handler's end), but in a loop they
/// are the HTTP/2 denial-of-service attacks on a multiplexed protocol: "Rapid Reset" (CVE-2023-44487, a call
/// opened and cancelled at once, again and again), the reset flood (CVE-2019-9514) and the empty-frames flood
/// (CVE-2019-9518). The concurrency limit holds against them (a cancelled call keeps its slot until its handler has
/// ended), but each still costs the server a handler started and stopped, or a frame read and thrown away, and
/// costs the peer nothing it must read. (Opens refused because the connection has its most calls are not counted:
/// the limit is not announced, so an honest caller with many calls at once meets it.) So, as nghttp2 limits stream resets (a token bucket: a burst of 1,000,
/// refilled at 33 per second) and other HTTP/2 servers close such peers with `ENHANCE_YOUR_CALM`, a connection may
/// send ``burst`` of them at once and ``perSecond`` more each second; beyond, it is closed with going-away `0x01`.
/// The rate is higher than nghttp2's because a connection has at most 100 calls at once here (so an honest burst
/// stays far below 1,000), and what a second's allowance costs the handler's side stays at a few milliseconds.
package struct WastedCallFrames {
    /// How many such frames a connection may send at once.
    package static let burst = 1_000
    /// How many more it may send each second, on average.
    package static let perSecond = 1_000

    /// What is left of the allowance, in frames (fractions accrue with time).
    private var allowance = Double(Self.burst)
    /// When the allowance was last brought up to date.
    private var updated: ContinuousClock.Instant?

    /// Starts with the whole burst.
    package init() {}

    /// Counts one such frame at `now`.
    /// - Returns: `false` when the allowance is spent: the connection must close.
    package mutating func spend(at now: ContinuousClock.Instant) -> Bool {
        if let updated {
            let elapsed = updated.duration(to: now)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            self.allowance = min(Double(Self.burst), self.allowance + max(0, seconds) * Double(Self.perSecond))
        }
        self.updated = now
        guard self.allowance >= 1 else { return false }
        self.allowance -= 1
        return true
    }
}
