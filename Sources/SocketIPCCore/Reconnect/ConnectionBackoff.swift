/// How long a reconnecting client waits between failed attempts: exponential backoff with jitter, as gRPC's
/// connection backoff (`doc/connection-backoff.md` in grpc/grpc): the first retry after ``initialDelay``, each
/// following one ``multiplier`` times longer up to ``maximumDelay``, each spread by ±``jitter`` so that many clients
/// of a restarted server do not all come back at the same instant.
public struct ConnectionBackoff: Sendable, Hashable {
    /// The wait before the first retry; default 50 ms (gRPC's is 1 s, for networks; a local socket comes back fast).
    public var initialDelay: Duration
    /// The longest wait between attempts; default 5 s.
    public var maximumDelay: Duration
    /// How much longer each wait is than the one before; default 1.6 (gRPC's).
    public var multiplier: Double
    /// The spread of each wait, as a fraction of it: 0.2 (gRPC's) waits between 80 % and 120 % of the nominal delay.
    public var jitter: Double

    /// Creates a backoff.
    /// - Parameters:
    ///   - initialDelay: The wait before the first retry; default 50 ms.
    ///   - maximumDelay: The longest wait; default 5 s.
    ///   - multiplier: The growth of each wait; default 1.6.
    ///   - jitter: The spread of each wait, 0 to 1; default 0.2.
    public init(
        initialDelay: Duration = .milliseconds(50),
        maximumDelay: Duration = .seconds(5),
        multiplier: Double = 1.6,
        jitter: Double = 0.2
    ) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The wait before retry number `retry` (1 for the first), with `random` in `0..<1` choosing where in the
    /// jitter's range it falls.
    ///
    /// Settings out of range are taken at the nearest sensible value, never trapped on (found by a review: a delay
    /// of `.seconds(Int64.max)`, or a `jitter` of `.nan`, crashed the client at its first retry): delays between zero
    /// and 100 years (`Duration.longestWait`), a `multiplier` below 1 or not a number as 1, a `jitter` outside 0...1
    /// clamped (not a number: 0).
    package func delay(beforeRetry retry: Int, random: Double) -> Duration {
        let initial = Self.seconds(self.initialDelay.asWait)
        let maximum = Self.seconds(self.maximumDelay.asWait)
        let exponent = Double(max(retry - 1, 0))
        let multiplier = self.multiplier.isNaN ? 1 : max(self.multiplier, 1)
        let grown = initial == 0 ? 0 : initial * power(multiplier, exponent)
        let nominal = grown.isNaN ? maximum : min(grown, maximum)
        let spread = self.jitter.isNaN ? 0 : min(max(self.jitter, 0), 1)
        let position = random.isNaN ? 0.5 : min(max(random, 0), 1)
        let jittered = nominal * (1 - spread + 2 * spread * position)
        let longest = Self.seconds(Duration.longestWait)
        guard jittered.isFinite else { return Duration.longestWait }
        return .nanoseconds(Int64(min(max(jittered, 0), longest) * 1e9))
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// `base` to the power `exponent`, by repeated squaring on the integer part (the core imports no Foundation).
private func power(_ base: Double, _ exponent: Double) -> Double {
    var result = 1.0
    var factor = base
    var remaining = Int(min(exponent, 1000))
    while remaining > 0 {
        if remaining & 1 == 1 { result *= factor }
        factor *= factor
        remaining >>= 1
        if result.isInfinite { return result }
    }
    return result
}
