import NIOCore
import Synchronization

/// A sleep on an event loop's timer that gives its memory back as soon as it is cut short: ``ServiceContext/sleep(for:)``.
///
/// A cancelled `Task.sleep` keeps its timer, and the memory with it, until the time it would have ended
/// (swiftlang/swift#60441; measured with Swift 6.3.1: 100,000 sleeps of a long time, cancelled, kept about 70 MiB or
/// more each time): a handler that slept for a time its caller chose, cut short by deadlines of 1 ms, made
/// `socket-ipc serve` grow by 1.5 MiB a second for as long as a peer liked (found by a review). Here a cancellation
/// cancels the event loop's scheduled task, which the loop drops at once.
final class HandlerSleep: Sendable {
    private enum State {
        case starting
        case waiting(UnsafeContinuation<Void, any Error>)
        case cancelledEarly
        case done
    }

    private let state = Mutex(State.starting)
    private let timer = Mutex<Scheduled<Void>?>(nil)

    /// Sleeps for `duration`; `schedule` runs its argument after the given time on an event loop, and is given the
    /// scheduled task to `observe` (for the tests).
    /// - Throws: `CancellationError` when the task is cancelled first; the timer is then cancelled. The event loop's
    ///   error if it shuts down first.
    static func sleep(
        for duration: Duration,
        schedule: (Duration, @escaping @Sendable () -> Void) -> Scheduled<Void>,
        observe: (Scheduled<Void>) -> Void = { _ in }
    ) async throws {
        try Task.checkCancellation()
        guard duration > .zero else { return }
        // About 292 years fit in TimeAmount's nanoseconds; a century is as good as for ever here.
        let bounded = min(duration, .seconds(100 * 365 * 86_400))
        let sleep = HandlerSleep()
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let proceed = sleep.state.withLock { state -> Bool in
                    if case .cancelledEarly = state { return false }
                    state = .waiting(continuation)
                    return true
                }
                guard proceed else {
                    continuation.resume(throwing: CancellationError())
                    return
                }
                let scheduled = schedule(bounded) { sleep.end(throwing: nil) }
                // An event loop that shuts down fails its scheduled tasks: the sleep ends with that error rather than
                // never (a cancelled timer fails too, after the sleep has ended: nothing then).
                scheduled.futureResult.whenFailure { sleep.end(throwing: $0) }
                sleep.timer.withLock { $0 = scheduled }
                observe(scheduled)
                // Cancelled between the two locks: the timer was not there yet to cancel.
                if sleep.isDone { scheduled.cancel() }
            }
        } onCancel: {
            sleep.end(throwing: CancellationError())
        }
    }

    private var isDone: Bool {
        self.state.withLock { if case .done = $0 { return true } else { return false } }
    }

    /// Resumes the sleeper once (its time is up, or `error`), and cancels the timer.
    private func end(throwing error: (any Error)?) {
        let continuation = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
            switch state {
            case .starting:
                state = .cancelledEarly
                return nil
            case .waiting(let continuation):
                state = .done
                return continuation
            case .cancelledEarly, .done:
                return nil
            }
        }
        guard let continuation else { return }
        if error != nil { self.timer.withLock { $0 }?.cancel() }
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}

extension ServiceContext {
    /// Suspends the handler for `duration`, as `Task.sleep(for:)` does, on the connection's event loop's timer.
    ///
    /// Use it for a wait whose length a caller may choose. A sleep cut short (the call's deadline passed, the caller
    /// cancelled, the connection closed, the server shut down) gives its memory back at once, whereas a cancelled
    /// `Task.sleep` keeps its timer until the time it would have ended (swiftlang/swift#60441): a caller that asked
    /// for long sleeps with deadlines of 1 ms made a server that used `Task.sleep` grow without bound.
    /// - Parameter duration: How long; zero or less returns at once. Longer than a century counts as a century.
    /// - Throws: `CancellationError` when the handler's task is cancelled before the time is up.
    public func sleep(for duration: Duration) async throws {
        try await HandlerSleep.sleep(for: duration) { delay, body in
            self.connection.scheduleCallTimer(in: delay, body)
        }
    }
}
