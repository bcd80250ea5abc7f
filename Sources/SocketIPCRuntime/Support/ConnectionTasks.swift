import Synchronization

/// The async handler work of one connection, owned by one driver task that starts with the first job (an idle
/// connection, or one whose handlers answer on the event loop, costs no task) and ends only once every job has.
///
/// A job for the global executor runs as a child task of the driver. A job that prefers an executor of its own (its
/// connection's event loop, as a service call's handler does) runs in a task of its own, started right where it is
/// asked for: a child of the driver would first wake the driver on another thread, which then starts the child back
/// on the event loop (two thread hops a call, the most of a typed call's cost). The driver tracks those tasks as it
/// tracks its children: it cancels them when the connection closes (or when it is cancelled itself) and waits for
/// them before it ends, so ``Server/run()`` still returns only once every handler has.
///
/// A server's connection drives its jobs in the server's ``HandlerTaskGroup``; a client's connection in a task of
/// its own. A job that comes after the connection closed runs cancelled.
final class ConnectionTasks: Sendable {
    /// Who starts the driver task.
    enum Owner: Sendable {
        /// A server's connection: the driver is a child of the server's group.
        case server(HandlerTaskGroup)
        /// A client's connection: the driver is a task of its own, cancelled only by the connection's close.
        case connection
    }

    private enum Phase {
        /// No job yet: no driver.
        case idle
        /// The driver was started: child jobs it has not taken yet, and the driver while it waits for more.
        case active(jobs: [Job], waiter: UnsafeContinuation<Batch, Never>?)
        /// The connection closed: jobs the driver has not taken yet, which it runs cancelled if `cancelling`.
        case closed(jobs: [Job], cancelling: Bool)
    }

    private struct State {
        var phase = Phase.idle
        /// The running jobs that prefer an executor of their own, each in a task of its own, by a number.
        var attached: [UInt64: Task<Void, Never>] = [:]
        var nextAttachedNumber: UInt64 = 0
        /// Whether attached jobs are cancelled as they start: the connection closed, or the driver was cancelled.
        var cancelsAttached = false
        /// The drivers that wait for the attached jobs to end: usually one, but a job that comes after the close
        /// starts a driver of its own while the first may still wait.
        var drainWaiters: [UnsafeContinuation<Void, Never>] = []
    }

    /// A job and the executor it prefers (the global one when `nil`).
    struct Job {
        var run: HandlerJob
        var executor: (any TaskExecutor)?
    }

    /// What the driver does next.
    private struct Batch {
        var jobs: [Job]
        /// Whether the connection closed: end once every job has.
        var closed: Bool
        /// Whether to cancel the jobs still running first.
        var cancel = true
    }

    private let owner: Owner
    private let state = Mutex(State())

    /// The work of one connection, driven as `owner` starts it.
    init(owner: Owner) {
        self.owner = owner
    }

    /// Runs `job`, starting the connection's driver with the first job. From any thread.
    /// - Parameter executor: The executor the job prefers; `nil`, the default, is the global executor, and the job
    ///   runs as a child task of the driver. With an executor, the job starts on it at once, in a task the driver
    ///   tracks.
    func run(_ job: @escaping HandlerJob, on executor: (any TaskExecutor)? = nil) {
        let job = Job(run: job, executor: executor)
        enum Next {
            case startDriver
            case resume(UnsafeContinuation<Batch, Never>)
            case none
        }
        let next = self.state.withLock { state -> Next in
            switch state.phase {
            case .idle:
                if let executor {
                    self.attach(job.run, on: executor, state: &state)
                    state.phase = .active(jobs: [], waiter: nil)
                } else {
                    state.phase = .active(jobs: [job], waiter: nil)
                }
                return .startDriver
            case .active(var jobs, let waiter):
                if let executor {
                    self.attach(job.run, on: executor, state: &state)
                    return .none
                }
                if let waiter {
                    state.phase = .active(jobs: [], waiter: nil)
                    return .resume(waiter)
                }
                state.phase = .idle  // not read: keeps `jobs` unshared while it grows
                jobs.append(job)
                state.phase = .active(jobs: jobs, waiter: nil)
                return .none
            case .closed(var jobs, let cancelling):
                guard jobs.isEmpty else {
                    state.phase = .idle  // not read: keeps `jobs` unshared while it grows
                    jobs.append(job)
                    state.phase = .closed(jobs: jobs, cancelling: cancelling)
                    return .none
                }
                // Its driver ended (or never started): run it cancelled in a driver of its own.
                state.phase = .closed(jobs: [job], cancelling: true)
                return .startDriver
            }
        }
        switch next {
        case .startDriver:
            switch self.owner {
            case .server(let group): group.start(self)
            case .connection: Task { await self.drive() }
            }
        case .resume(let waiter):
            waiter.resume(returning: Batch(jobs: [job], closed: false))
        case .none:
            break
        }
    }

    /// Starts `job` in a task of its own on `executor`, tracked in `state`. Called with the lock held: the task
    /// cannot report its end (which takes the lock) before it is tracked.
    private func attach(_ job: @escaping HandlerJob, on executor: any TaskExecutor, state: inout State) {
        let number = state.nextAttachedNumber
        state.nextAttachedNumber &+= 1
        let task = Task(executorPreference: executor) {
            await job()
            self.attachedJobEnded(number)
        }
        if state.cancelsAttached { task.cancel() }
        state.attached[number] = task
    }

    private func attachedJobEnded(_ number: UInt64) {
        let waiters = self.state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.attached[number] = nil
            guard state.attached.isEmpty else { return [] }
            defer { state.drainWaiters = [] }
            return state.drainWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Cancels the attached jobs running, and those that start from now on.
    private func cancelAttachedJobs() {
        let tasks = self.state.withLock { state -> [Task<Void, Never>] in
            state.cancelsAttached = true
            return Array(state.attached.values)
        }
        for task in tasks { task.cancel() }
    }

    /// Waits until no attached job runs.
    private func attachedJobsEnded() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = self.state.withLock { state -> Bool in
                if state.attached.isEmpty { return true }
                state.drainWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// The connection closed: ends its driver once its jobs have ended, and (with `cancellingJobs`, the default)
    /// cancels the jobs still running first. Safe to call more than once.
    /// - Parameter cancellingJobs: Whether the jobs still running are cancelled: `true` where nobody can use their
    ///   outcome any more (the answer to a framed request); `false` where the work is the point (an EOF-style
    ///   message received whole is handled even when its client closes without waiting for the acknowledgement,
    ///   as `socat` does). The server's grace period ends them all the same.
    func close(cancellingJobs: Bool = true) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Batch, Never>? in
            switch state.phase {
            case .idle:
                state.phase = .closed(jobs: [], cancelling: cancellingJobs)
                return nil
            case .active(let jobs, let waiter):
                state.phase = .closed(jobs: jobs, cancelling: cancellingJobs)
                return waiter
            case .closed:
                return nil
            }
        }
        if cancellingJobs { self.cancelAttachedJobs() }
        waiter?.resume(returning: Batch(jobs: [], closed: true, cancel: cancellingJobs))
    }

    /// Runs the connection's child jobs until the connection closes, then cancels the jobs still running (children
    /// and attached) and returns once they have all ended. Cancelling the driver cancels every job, now and later.
    func drive() async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                while true {
                    let batch = await self.next()
                    for job in batch.jobs {
                        group.addTask(executorPreference: job.executor ?? globalConcurrentExecutor, operation: job.run)
                    }
                    if batch.closed {
                        if batch.cancel { group.cancelAll() }
                        return
                    }
                }
            }
            await self.attachedJobsEnded()
        } onCancel: {
            self.cancelAttachedJobs()
        }
    }

    /// Waits for child jobs or the close, and takes them.
    private func next() async -> Batch {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Batch, Never>) in
            let batch = self.state.withLock { state -> Batch? in
                switch state.phase {
                case .idle:
                    preconditionFailure("a connection's driver runs only once it has a job")
                case .active(let jobs, _) where !jobs.isEmpty:
                    state.phase = .active(jobs: [], waiter: nil)
                    return Batch(jobs: jobs, closed: false)
                case .active:
                    state.phase = .active(jobs: [], waiter: continuation)
                    return nil
                case .closed(let jobs, let cancelling):
                    state.phase = .closed(jobs: [], cancelling: cancelling)
                    return Batch(jobs: jobs, closed: true, cancel: cancelling)
                }
            }
            if let batch { continuation.resume(returning: batch) }
        }
    }
}
