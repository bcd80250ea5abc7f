import Synchronization

/// The daemon's keys and values, in memory, and the watchers of each key.
public final class Store: Sendable {
    private struct State {
        var values: [String: String] = [:]
        var watchers: [Int: (key: String, changes: AsyncStream<String?>.Continuation)] = [:]
        var nextWatcher = 0
    }

    private let state = Mutex(State())

    /// Creates an empty store.
    public init() {}

    /// The value of `key`, if it has one.
    public subscript(key: String) -> String? {
        self.state.withLock { $0.values[key] }
    }

    /// Sets the value of `key` and tells its watchers.
    /// - Returns: The value it replaced, if any.
    @discardableResult
    public func set(_ key: String, to value: String) -> String? {
        self.state.withLock { state in
            for watcher in state.watchers.values where watcher.key == key { watcher.changes.yield(value) }
            return state.values.updateValue(value, forKey: key)
        }
    }

    /// The value of `key` now (`nil`: not set), then each new one; a slow reader skips to the newest.
    public func values(of key: String) -> AsyncStream<String?> {
        let (stream, continuation) = AsyncStream.makeStream(of: String?.self, bufferingPolicy: .bufferingNewest(1))
        let id = self.state.withLock { state in
            continuation.yield(state.values[key])
            state.nextWatcher += 1
            state.watchers[state.nextWatcher] = (key, continuation)
            return state.nextWatcher
        }
        continuation.onTermination = { _ in
            _ = self.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }
}
