/// What the accepting thread does when `accept` fails for lack of descriptors or memory (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`): how long it waits before trying again, and when it says so in the log. A value without I/O.
///
/// The wait doubles with each failure from ``delayRange``'s lower bound up to its upper one, and halves with each
/// success, so a server that keeps running out (a peer that opens a connection whenever one closes) keeps backing
/// off. The log gets at most one line about failures and one about recovering per ``reportInterval``, with counts,
/// however often the two alternate.
package struct AcceptBackoff {
    /// The shortest and longest wait after a failure.
    package static let delayRange: ClosedRange<Duration> = .milliseconds(1) ... .seconds(1)
    /// The least time between two log lines of one kind.
    package static let reportInterval: Duration = .seconds(10)

    /// A line for the log.
    package enum Report: Equatable {
        /// `accept` fails: `failures` times since the last such line (the first line of all says `first`).
        case failing(errno: Int32, failures: Int, first: Bool)
        /// `accept` works again, after `failures` failures since the last such line.
        case recovered(failures: Int)
    }

    /// The wait after the next failure.
    package private(set) var delay = Self.delayRange.lowerBound
    private var failing = false
    private var failuresSinceFailureReport = 0
    private var failuresSinceRecoveryReport = 0
    private var lastFailureReport: ContinuousClock.Instant?
    private var lastRecoveryReport: ContinuousClock.Instant?

    /// Starts with no failure seen.
    package init() {}

    /// Counts a failure with `errno`.
    /// - Returns: How long to wait before the next `accept`, and a line to log, if one is due.
    package mutating func failed(errno: Int32, at now: ContinuousClock.Instant = .now) -> (wait: Duration, report: Report?) {
        self.failing = true
        self.failuresSinceFailureReport += 1
        self.failuresSinceRecoveryReport += 1
        let wait = self.delay
        self.delay = min(self.delay * 2, Self.delayRange.upperBound)
        guard Self.isDue(self.lastFailureReport, at: now) else { return (wait, nil) }
        defer {
            self.lastFailureReport = now
            self.failuresSinceFailureReport = 0
        }
        return (wait, .failing(errno: errno, failures: self.failuresSinceFailureReport, first: self.lastFailureReport == nil))
    }

    /// Counts a successful `accept`.
    /// - Returns: A line to log, if `accept` had been failing and one is due.
    package mutating func succeeded(at now: ContinuousClock.Instant = .now) -> Report? {
        guard self.failing else { return nil }
        self.failing = false
        self.delay = max(self.delay / 2, Self.delayRange.lowerBound)
        guard Self.isDue(self.lastRecoveryReport, at: now) else { return nil }
        defer {
            self.lastRecoveryReport = now
            self.failuresSinceRecoveryReport = 0
        }
        return .recovered(failures: self.failuresSinceRecoveryReport)
    }

    private static func isDue(_ last: ContinuousClock.Instant?, at now: ContinuousClock.Instant) -> Bool {
        last.map { now - $0 >= Self.reportInterval } ?? true
    }
}
