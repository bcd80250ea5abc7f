import SocketIPCCore
import Synchronization

extension ServiceClient {
    /// Where a ``ServiceClient`` is, as ``ServiceClient/states`` reports it.
    public enum State: Sendable, Equatable, CustomStringConvertible {
        /// ``ServiceClient/run()`` has not started.
        case idle
        /// Connecting; `attempt` counts from 1 since the last connection that was ready.
        case connecting(attempt: Int)
        /// Connected: calls go through.
        case ready
        /// The last attempt failed with `error`; the next one comes after `delay`.
        case waitingToRetry(retry: Int, delay: Duration, error: SocketIPCError)
        /// The client cannot connect and will not try again (the server refused it, or does not speak the
        /// protocol): calls fail with `error`.
        case failed(SocketIPCError)
        /// ``ServiceClient/shutdown()`` was called, or ``ServiceClient/run()`` was cancelled.
        case shutDown

        /// `delay` in whole milliseconds, rounded.
        static func milliseconds(_ delay: Duration) -> Int64 {
            let (seconds, attoseconds) = delay.components
            return seconds * 1000 + (attoseconds + 500_000_000_000_000) / 1_000_000_000_000_000
        }

        /// A short description, such as `waiting to retry (2) in 80 ms: connectionRefused`.
        public var description: String {
            switch self {
            case .idle: "idle"
            case .connecting(let attempt): "connecting (attempt \(attempt))"
            case .ready: "ready"
            case .waitingToRetry(let retry, let delay, let error):
                "waiting to retry (\(retry)) in \(Self.milliseconds(delay)) ms: \(error.code)"
            case .failed(let error): "failed: \(error)"
            case .shutDown: "shut down"
            }
        }
    }

    /// The client's states as they change, starting with the current one: an `AsyncSequence` that ends once the
    /// client has shut down or failed. Each access makes a new sequence; a consumer that falls behind sees the
    /// newest states (the last 16 are kept).
    public var states: AsyncStream<State> {
        let (stream, continuation) = AsyncStream.makeStream(of: State.self, bufferingPolicy: .bufferingNewest(16))
        let id = self.nextSubscriberID.wrappingAdd(1, ordering: .relaxed).newValue
        // Yielded under the lock, so that a state published meanwhile comes after it, never before (found by a
        // review: a subscriber got `connecting` after `waiting to retry` of the same attempt). `finish()` runs the
        // termination handler, which takes the lock: outside it.
        let current = self.published.withLock { published -> State in
            continuation.yield(published.state)
            if !published.state.isFinal { published.subscribers[id] = continuation }
            return published.state
        }
        if current.isFinal {
            continuation.finish()
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.published.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// The current state.
    public var state: State { self.published.withLock { $0.state } }

    /// Records and announces `state`, in order: each subscriber gets it under the lock. Nothing follows a final state.
    func publish(_ state: State) {
        let finished = self.published.withLock { published -> [AsyncStream<State>.Continuation] in
            guard !published.state.isFinal else { return [] }
            published.state = state
            for subscriber in published.subscribers.values { subscriber.yield(state) }
            guard state.isFinal else { return [] }
            defer { published.subscribers = [:] }
            return Array(published.subscribers.values)
        }
        // Outside the lock: finishing runs each subscriber's termination handler, which takes it.
        for subscriber in finished { subscriber.finish() }
    }

    struct Published {
        var state: State = .idle
        var subscribers: [Int: AsyncStream<State>.Continuation] = [:]
    }
}

extension ServiceClient.State {
    /// Whether nothing follows this state.
    var isFinal: Bool {
        switch self {
        case .failed, .shutDown: true
        default: false
        }
    }
}
