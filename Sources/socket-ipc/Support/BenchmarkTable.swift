import Foundation
import SocketIPCBenchmarkWorkloads

/// The table `bench` prints: one row per workload, from the JSON line of shared/bench's format.
///
/// ```
/// workload        n  conns     size            rate   p50 µs   p99 µs   GiB/s
/// rr          50000      1       64    16034 ops/s     58.1     95.2       -
/// ```
struct BenchmarkTable: Sendable {
    /// The columns: title, width, and how to get the cell from the report's fields.
    private static let columns: [(title: String, width: Int, cell: @Sendable ([String: Any]) -> String)] = [
        ("workload", 9, { "\($0["workload"] ?? "?")" }),
        ("n", 8, { "\($0["n"] ?? "-")" }),
        ("conns", 6, { "\($0["conns"] ?? "-")" }),
        ("size", 9, { "\($0["size"] ?? "-")" }),
        ("rate", 18, { fields in
            guard let (key, value) = fields.first(where: { $0.key.hasSuffix("_per_s") && $0.key != "gib_per_s" }),
                let rate = value as? Double
            else { return "-" }
            return String(format: "%.0f %@", rate, key.replacingOccurrences(of: "_per_s", with: "/s"))
        }),
        ("p50 µs", 9, { number($0["p50_us"], "%.1f") }),
        ("p99 µs", 9, { number($0["p99_us"], "%.1f") }),
        ("GiB/s", 8, { number($0["gib_per_s"], "%.2f") }),
    ]

    /// The header line.
    var header: String {
        Self.format(Self.columns.map(\.title))
    }

    /// The row for `report`; the raw JSON when it cannot be read.
    func row(_ report: BenchmarkReport) -> String {
        let line = "\(report)"
        guard let data = line.data(using: .utf8),
            let fields = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { return line }
        return Self.format(Self.columns.map { $0.cell(fields) })
    }

    /// The cells, the first left-aligned and the others right-aligned to their columns' widths.
    private static func format(_ cells: [String]) -> String {
        zip(cells, Self.columns).enumerated().map { index, pair in
            let (cell, column) = pair
            let padding = String(repeating: " ", count: max(0, column.width - cell.count))
            return index == 0 ? cell + padding : padding + cell
        }.joined(separator: " ")
    }
}

/// `value` formatted with `format` when it is a number, else `-`.
private func number(_ value: Any?, _ format: String) -> String {
    guard let value = value as? Double else { return "-" }
    return String(format: format, value)
}
