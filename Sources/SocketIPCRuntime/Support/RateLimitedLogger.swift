import Logging
import Synchronization

/// Logs a kind of event that a hostile peer can cause at any rate (refused connections, failed accepts) without
/// letting it flood the log: at most ``burst`` lines per ``interval``; the events beyond that are counted, and the
/// next line that is logged says how many were suppressed.
final class RateLimitedLogger: Sendable {
    private struct Window {
        var start: ContinuousClock.Instant
        var logged = 0
        var suppressed = 0
    }

    private let logger: Logger
    private let burst: Int
    private let interval: Duration
    private let window: Mutex<Window>

    /// - Parameters:
    ///   - logger: Where the lines go.
    ///   - burst: Lines logged per interval at most; default 10.
    ///   - interval: The interval; default 1 s.
    init(_ logger: Logger, burst: Int = 10, interval: Duration = .seconds(1)) {
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.window = Mutex(Window(start: .now))
    }

    /// Logs `message` at `level` unless this interval's lines are used up; then only counts it.
    func log(level: Logger.Level, _ message: @autoclosure () -> Logger.Message, metadata: Logger.Metadata = [:]) {
        guard self.logger.logLevel <= level else { return }
        let now = ContinuousClock.now
        let suppressed = self.window.withLock { window -> Int? in
            if now - window.start >= self.interval {
                window.start = now
                window.logged = 0
            }
            guard window.logged < self.burst else {
                window.suppressed += 1
                return nil
            }
            window.logged += 1
            defer { window.suppressed = 0 }
            return window.suppressed
        }
        guard let suppressed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["socketipc.suppressed"] = "\(suppressed)" }
        self.logger.log(level: level, message(), metadata: metadata)
    }
}
