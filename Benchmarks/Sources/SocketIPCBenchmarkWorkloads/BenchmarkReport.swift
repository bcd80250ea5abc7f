import NIOCore

/// The one JSON line a benchmark client prints, with the fields in the order `shared/bench/README.md` gives.
public struct BenchmarkReport: Sendable, CustomStringConvertible {
    private var fields: [String]

    init(_ options: BenchmarkOptions) {
        self.fields = [
            "\"workload\":\"\(options.workload.rawValue)\"", "\"n\":\(options.n)",
            "\"conns\":\(options.conns)", "\"size\":\(options.size)",
        ]
    }

    mutating func add(_ key: String, _ value: Double, digits: Int) {
        self.fields.append("\"\(key)\":\(Self.fixed(value, digits: digits))")
    }

    /// `elapsed_s` and the rate of round trips, with nearest-rank latency percentiles of `latencies` (nanoseconds).
    static func roundTrips(_ options: BenchmarkOptions, latencies: [UInt64], elapsed: UInt64, rateKey: String) -> Self {
        let seconds = Double(elapsed) / 1e9
        var report = Self(options)
        report.add("elapsed_s", seconds, digits: 4)
        report.add(rateKey, Double(latencies.count) / seconds, digits: 1)
        let sorted = latencies.sorted()
        for (key, quantile) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            let index = min(sorted.count - 1, Int(Double(sorted.count) * quantile))
            report.add(key, Double(sorted[index]) / 1_000, digits: 2)
        }
        return report
    }

    /// `elapsed_s`, messages per second and GiB per second of `n` one-way messages of `size` bytes.
    static func oneWay(_ options: BenchmarkOptions, elapsed: UInt64) -> Self {
        let seconds = Double(elapsed) / 1e9
        var report = Self(options)
        report.add("elapsed_s", seconds, digits: 4)
        report.add("msgs_per_s", Double(options.n) / seconds, digits: 1)
        report.add("gib_per_s", Double(options.n) * Double(options.size) / seconds / 1_073_741_824, digits: 3)
        return report
    }

    /// The JSON object on one line.
    public var description: String { "{" + self.fields.joined(separator: ",") + "}" }

    private static func fixed(_ value: Double, digits: Int) -> String {
        var scale: Int64 = 1
        for _ in 0..<digits { scale *= 10 }
        let scaled = Int64((value * Double(scale)).rounded())
        let whole = "\(scaled < 0 ? "-" : "")\(abs(scaled) / scale)"
        guard digits > 0 else { return whole }
        let fraction = String(abs(scaled) % scale)
        return whole + "." + String(repeating: "0", count: digits - fraction.count) + fraction
    }
}

/// The monotonic clock, in nanoseconds.
@inline(__always)
func monotonicNanos() -> UInt64 {
    NIODeadline.now().uptimeNanoseconds
}
