import Synchronization

/// The daemon's keys and values, in memory, and the watchers of each key.
public final class Store: Sendable {
    private struct State {
        var values: [String: String] = [:]
        var watchers: [Int: (key: String, changes: AsyncStream<String?>.Continuation)] = [:]
        var nextWatcher = 0
    }

    private let state = Mutex(State())
    /// Held while watchers are told, so that each sees the values in order. Not `state`: a watcher's `onTermination`
    /// takes `state` while its task is being cancelled, and a `yield` made under `state` may wait for that task, a
    /// deadlock. Never `yield` to a stream under a lock its `onTermination` takes.
    private let telling = Mutex(())

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
        self.telling.withLock { _ in
            let (replaced, watchers) = self.state.withLock { state in
                (state.values.updateValue(value, forKey: key), state.watchers.values.filter { $0.key == key })
            }
            for watcher in watchers { watcher.changes.yield(value) }
            return replaced
        }
    }

    /// The value of `key` now (`nil`: not set), then each new one; a slow reader skips to the newest.
    public func values(of key: String) -> AsyncStream<String?> {
        let (stream, continuation) = AsyncStream.makeStream(of: String?.self, bufferingPolicy: .bufferingNewest(1))
        let id = self.telling.withLock { _ in
            let (id, current) = self.state.withLock { state in
                state.nextWatcher += 1
                state.watchers[state.nextWatcher] = (key, continuation)
                return (state.nextWatcher, state.values[key])
            }
            continuation.yield(current)
            return id
        }
        continuation.onTermination = { _ in
            _ = self.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }
}
