import Synchronization

/// The wait of ``Connection/waitUntilDrained()``: resumed once, by the write's completion or the task's
/// cancellation, whichever comes first (one that comes before the wait began ends it as it begins).
final class DrainWaiter: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Void, any Error>?, early: Result<Void, any Error>?)>((nil, nil))

    func set(_ continuation: CheckedContinuation<Void, any Error>) {
        let early = self.state.withLock { state -> Result<Void, any Error>? in
            if let early = state.early { return early }
            state.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    func resume(with result: Result<Void, any Error>) {
        let continuation = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard let continuation = state.continuation.take() else {
                if state.early == nil { state.early = result }
                return nil
            }
            state.early = result
            return continuation
        }
        continuation?.resume(with: result)
    }
}
