import Synchronization

/// A connection's ``ConnectionTasks``, made when its first job comes, from any thread: a connection whose handlers
/// never start async work (an idle one, or one whose handlers answer on the event loop) costs no allocation for
/// them, only this slot.
struct ConnectionTaskSlot: ~Copyable, Sendable {
    // Not private: Swift 6.3 fails to compile (a broken LLVM module) a class in another file that stores this slot
    // when its state's type is private.
    enum State {
        /// No job yet.
        case notMade(ConnectionTasks.Owner)
        /// The connection's tasks.
        case made(ConnectionTasks)
        /// The connection closed before any job came.
        case closed(ConnectionTasks.Owner)
    }

    private let state: Mutex<State>

    /// An empty slot; the tasks made in it are driven as `owner` starts them.
    init(owner: ConnectionTasks.Owner) {
        self.state = Mutex(.notMade(owner))
    }

    /// The connection's tasks, made now if they were not yet; after the connection closed, tasks that run their
    /// jobs cancelled.
    func get() -> ConnectionTasks {
        self.state.withLock { state in
            switch state {
            case .made(let tasks):
                return tasks
            case .notMade(let owner):
                let tasks = ConnectionTasks(owner: owner)
                state = .made(tasks)
                return tasks
            case .closed(let owner):
                let tasks = ConnectionTasks(owner: owner)
                tasks.close()
                return tasks
            }
        }
    }

    /// The connection closed: cancels its jobs still running (unless `cancellingJobs` is `false`, see
    /// ``ConnectionTasks/close(cancellingJobs:)``), if it has any; jobs that come later run cancelled.
    func close(cancellingJobs: Bool = true) {
        let tasks = self.state.withLock { state -> ConnectionTasks? in
            switch state {
            case .made(let tasks):
                return tasks
            case .notMade(let owner):
                state = .closed(owner)
                return nil
            case .closed:
                return nil
            }
        }
        tasks?.close(cancellingJobs: cancellingJobs)
    }
}
