import Foundation

/// The summary `request --count` prints: how many round trips, in how long, and their latency percentiles.
struct LatencySummary {
    /// How many round trips.
    let count: Int
    /// How many were in flight at most.
    let concurrency: Int
    /// From the first request to the last reply.
    let elapsed: Duration
    /// The nearest-rank percentiles of the latencies, in microseconds: min, p50, p90, p99, max.
    let percentiles: [(name: String, microseconds: Double)]

    /// Summarizes `latencies` (one per round trip), taken over `elapsed` with `concurrency` in flight.
    init(latencies: [Duration], elapsed: Duration, concurrency: Int) {
        self.count = latencies.count
        self.concurrency = concurrency
        self.elapsed = elapsed
        let sorted = latencies.sorted()
        self.percentiles = [("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)].map { name, rank in
            guard !sorted.isEmpty else { return (name, 0) }
            // Nearest rank: the smallest value with at least `rank` of the values at or below it.
            let index = min(sorted.count - 1, max(0, Int((rank * Double(sorted.count)).rounded(.up)) - 1))
            return (name, Self.microseconds(sorted[index]))
        }
    }

    /// Seconds from the first request to the last reply.
    var seconds: Double { Self.microseconds(self.elapsed) / 1e6 }

    /// Round trips per second.
    var rate: Double { self.seconds > 0 ? Double(self.count) / self.seconds : 0 }

    /// `20 requests (10 at once) in 0.012 s: 1666 requests/s; latency µs min 310 p50 520 p90 700 p99 900 max 910`.
    var text: String {
        let latencies = self.percentiles.map { "\($0.name) \(Self.rounded($0.microseconds))" }.joined(separator: " ")
        return "\(self.count) requests (\(self.concurrency) at once) in \(String(format: "%.3f", self.seconds)) s: "
            + "\(Int(self.rate.rounded())) requests/s; latency µs \(latencies)"
    }

    /// The summary's JSON object.
    var json: [String: Any] {
        var latency: [String: Any] = [:]
        for (name, value) in self.percentiles { latency[name] = Self.rounded(value) }
        return [
            "count": self.count, "concurrency": self.concurrency, "seconds": self.seconds,
            "requestsPerSecond": (self.rate * 10).rounded() / 10, "latencyMicroseconds": latency,
        ]
    }

    private static func microseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
    }

    private static func rounded(_ value: Double) -> Double { (value * 10).rounded() / 10 }
}
