import Foundation
import Synchronization

/// A one-line progress display on standard error for a large transfer: `[=====>      ]  42%  21.0 MiB of 50.0 MiB
/// 180.2 MiB/s`, redrawn in place with `\r` at most ten times a second, and erased when done.
///
/// It shows only when standard error is a terminal and the command is not `--quiet` (never when piped, so scripts
/// and logs never see it), and only once a transfer has lasted ``delay`` (a quick one shows nothing). Without a
/// known total it shows the bytes and the rate.
final class ProgressBar: Sendable {
    /// How long a transfer runs before the bar appears: 0.3 s.
    static let delay: Duration = .milliseconds(300)
    /// The least time between two redraws: 0.1 s.
    static let interval: Duration = .milliseconds(100)

    private struct State {
        var done = 0
        var lastDrawn: ContinuousClock.Instant?
        var shown = false
    }

    private let total: Int?
    private let label: String
    private let enabled: Bool
    private let start = ContinuousClock.now
    private let state = Mutex(State())

    /// A bar for `total` bytes (`nil` when unknown), headed by `label`.
    init(total: Int?, label: String) {
        self.total = total
        self.label = label
        self.enabled = Output.verbosity >= .normal && isatty(STDERR_FILENO) == 1
    }

    /// Counts `count` more bytes done and redraws if it is time.
    func advance(by count: Int) {
        guard self.enabled else { return }
        let now = ContinuousClock.now
        let line: String? = self.state.withLock { state in
            state.done += count
            guard now - self.start >= Self.delay else { return nil }
            if let last = state.lastDrawn, now - last < Self.interval { return nil }
            state.lastDrawn = now
            state.shown = true
            return self.render(done: state.done, elapsed: now - self.start)
        }
        if let line { Output.progress("\r" + line + "\u{1B}[K") }
    }

    /// Shows the label at once, without counts: a step whose progress is not counted in bytes (a running
    /// benchmark).
    func show() {
        guard self.enabled else { return }
        self.state.withLock { $0.shown = true }
        Output.progress("\r\(self.label) …\u{1B}[K")
    }

    /// Erases the bar, if it is shown.
    func finish() {
        let shown = self.state.withLock { state in
            defer { state.shown = false }
            return state.shown
        }
        if shown { Output.progress("\r\u{1B}[K") }
    }

    /// The bar's text for `done` bytes after `elapsed`.
    func render(done: Int, elapsed: Duration) -> String {
        let seconds = max(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, 1e-9)
        let rate = "\(formatBytes(Int(Double(done) / seconds)))/s"
        guard let total = self.total, total > 0 else {
            return "\(self.label) \(formatBytes(done))  \(rate)"
        }
        let fraction = min(1, Double(done) / Double(total))
        let width = 24
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "=", count: filled) + (filled < width ? ">" : "")
            + String(repeating: " ", count: max(0, width - filled - 1))
        let percent = String(format: "%3d%%", Int(fraction * 100))
        return "\(self.label) [\(bar)] \(percent)  \(formatBytes(done)) of \(formatBytes(total))  \(rate)"
    }
}

/// `512 B`, `4.0 KiB`, `21.3 MiB`, `1.50 GiB`: a byte count for people.
func formatBytes(_ count: Int) -> String {
    let value = Double(count)
    switch count {
    case ..<1024: return "\(count) B"
    case ..<(1024 * 1024): return String(format: "%.1f KiB", value / 1024)
    case ..<(1024 * 1024 * 1024): return String(format: "%.1f MiB", value / 1_048_576)
    default: return String(format: "%.2f GiB", value / 1_073_741_824)
    }
}
