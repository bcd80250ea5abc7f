import Synchronization

/// The command runs of `serve --exec` for one-way messages, which nothing answers: kept so that the server waits for
/// them (each bounded by `--exec-timeout`) before it exits, leaving no child behind.
final class OneWayRuns: Sendable {
    private let running = Mutex<[UInt64: Task<Void, Never>]>([:])
    private let nextID = Atomic<UInt64>(0)

    /// Starts `body` in a task of its own and keeps it until it ends.
    /// - Returns: The task.
    func start(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        let id = self.nextID.add(1, ordering: .relaxed).newValue
        return self.running.withLock { running in
            let task = Task {
                await body()
                _ = self.running.withLock { $0.removeValue(forKey: id) }
            }
            running[id] = task
            return task
        }
    }

    /// Waits until every run started so far, and any they were waiting for, has ended.
    func waitForAll() async {
        while let task = self.running.withLock({ $0.values.first }) {
            await task.value
        }
    }
}
