import Synchronization

/// One piece of a handler's async work: answering a request (``Reply/complete(_:)``), handling an EOF-style message.
typealias HandlerJob = @Sendable () async -> Void

/// A server's handler work: a discarding task group that ``Server/run()`` drives, with one child task for each
/// connection that has async work (that connection's ``ConnectionTasks`` driver), started when its first job comes.
///
/// Drivers are asked for from event loops and other threads; the task that drives the group adds them as children.
/// Cancelling the group (``cancelAll()``: a forced shutdown, the grace period's end) or the task that runs it reaches
/// every handler's work as task cancellation, and ``run()`` returns only once all of that work has ended: no handler
/// outlives its server.
final class HandlerTaskGroup: Sendable {
    private struct State {
        /// Drivers asked for and not yet added to the group.
        var pending: [ConnectionTasks] = []
        /// Whether ``cancelAll()`` was called since the group last looked.
        var cancelRequested = false
        /// Whether ``finish()`` was called: no drivers are added after those pending.
        var finishing = false
        /// Whether the group is done: a driver asked for now has no group to join.
        var ended = false
        /// The task driving the group, while it waits for something to do.
        var waiter: UnsafeContinuation<Void, Never>?
    }

    /// What the task driving the group does next.
    private struct Batch {
        var drivers: [ConnectionTasks] = []
        var cancel = false
        var finish = false
    }

    private let state = Mutex(State())

    /// A group that ``run()`` drives.
    init() {}

    /// Runs each connection's driver as a child task until ``finish()``, then waits for those children to end.
    func run() async {
        await withDiscardingTaskGroup { group in
            while true {
                let batch = await self.next()
                for driver in batch.drivers {
                    // On the global executor, as `Task {}` would run it: not on the executor that `run()`'s caller
                    // may prefer (an event loop's, inside `Client.withEventLoopExecutor`), whose I/O a handler
                    // would stall. (Drivers on their connection's event loop were tried: a loaded full test run then
                    // hung, for a reason not found yet.) Each job chooses its own executor.
                    group.addTask(executorPreference: globalConcurrentExecutor) { await driver.drive() }
                }
                if batch.cancel { group.cancelAll() }
                if batch.finish { break }
            }
        }
        let late = self.state.withLock { state -> [ConnectionTasks] in
            state.ended = true
            defer { state.pending = [] }
            return state.pending
        }
        for driver in late { Self.runCancelled(driver) }
    }

    /// Starts `driver` as a child of the group. From any thread.
    ///
    /// After the group is done (the server's connections have all closed, so this is a job that came after its
    /// connection closed), the driver runs in a task of its own, cancelled at once.
    func start(_ driver: ConnectionTasks) {
        let (waiter, ended) = self.state.withLock { state -> (UnsafeContinuation<Void, Never>?, Bool) in
            guard !state.ended else { return (nil, true) }
            state.pending.append(driver)
            defer { state.waiter = nil }
            return (state.waiter, false)
        }
        if ended { Self.runCancelled(driver) }
        waiter?.resume()
    }

    /// Cancels every handler's work, now and later: what is running, and what is started from now on.
    func cancelAll() {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.cancelRequested = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Lets ``run()`` return once the drivers started so far have ended: the server has drained.
    func finish() {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.finishing = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Waits until there is something to do, and takes it.
    private func next() async -> Batch {
        while true {
            let batch = self.state.withLock { state -> Batch? in
                guard !state.pending.isEmpty || state.cancelRequested || state.finishing else { return nil }
                defer {
                    state.pending = []
                    state.cancelRequested = false
                }
                return Batch(drivers: state.pending, cancel: state.cancelRequested, finish: state.finishing)
            }
            if let batch { return batch }
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let wakeNow = self.state.withLock { state -> Bool in
                    guard state.pending.isEmpty, !state.cancelRequested, !state.finishing else { return true }
                    state.waiter = continuation
                    return false
                }
                if wakeNow { continuation.resume() }
            }
        }
    }

    /// Runs a driver that has no group to join: in a task of its own, cancelled at once.
    private static func runCancelled(_ driver: ConnectionTasks) {
        Task { await driver.drive() }.cancel()
    }
}

/// The async handler work of one connection: each job runs as a child task of one driver task, which starts with the
/// first job (an idle connection, or one whose handlers answer on the event loop, costs no task), and cancels the
/// jobs still running when the connection closes.
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

    private enum State {
        /// No job yet: no driver.
        case idle
        /// The driver was started: jobs it has not taken yet, and the driver while it waits for more.
        case active(jobs: [Job], waiter: UnsafeContinuation<Batch, Never>?)
        /// The connection closed: jobs the driver has not taken yet, which it runs cancelled if `cancelling`.
        case closed(jobs: [Job], cancelling: Bool)
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
    private let state = Mutex(State.idle)

    /// The work of one connection, driven as `owner` starts it.
    init(owner: Owner) {
        self.owner = owner
    }

    /// Runs `job` as a child task of the connection's driver, starting the driver with the first job. From any
    /// thread.
    /// - Parameter executor: The executor the job prefers; `nil`, the default, is the global executor.
    func run(_ job: @escaping HandlerJob, on executor: (any TaskExecutor)? = nil) {
        let job = Job(run: job, executor: executor)
        enum Next {
            case startDriver
            case resume(UnsafeContinuation<Batch, Never>)
            case none
        }
        let next = self.state.withLock { state -> Next in
            switch state {
            case .idle:
                state = .active(jobs: [job], waiter: nil)
                return .startDriver
            case .active(var jobs, let waiter):
                if let waiter {
                    state = .active(jobs: [], waiter: nil)
                    return .resume(waiter)
                }
                state = .idle  // not read: keeps `jobs` unshared while it grows
                jobs.append(job)
                state = .active(jobs: jobs, waiter: nil)
                return .none
            case .closed(var jobs, let cancelling):
                guard jobs.isEmpty else {
                    state = .idle  // not read: keeps `jobs` unshared while it grows
                    jobs.append(job)
                    state = .closed(jobs: jobs, cancelling: cancelling)
                    return .none
                }
                // Its driver ended (or never started): run it cancelled in a driver of its own.
                state = .closed(jobs: [job], cancelling: true)
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

    /// The connection closed: ends its driver once its jobs have ended, and (with `cancellingJobs`, the default)
    /// cancels the jobs still running first. Safe to call more than once.
    /// - Parameter cancellingJobs: Whether the jobs still running are cancelled: `true` where nobody can use their
    ///   outcome any more (the answer to a framed request); `false` where the work is the point (an EOF-style
    ///   message received whole is handled even when its client closes without waiting for the acknowledgement,
    ///   as `socat` does). The server's grace period ends them all the same.
    func close(cancellingJobs: Bool = true) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Batch, Never>? in
            switch state {
            case .idle:
                state = .closed(jobs: [], cancelling: cancellingJobs)
                return nil
            case .active(let jobs, let waiter):
                state = .closed(jobs: jobs, cancelling: cancellingJobs)
                return waiter
            case .closed:
                return nil
            }
        }
        waiter?.resume(returning: Batch(jobs: [], closed: true, cancel: cancellingJobs))
    }

    /// Runs the connection's jobs as child tasks until the connection closes, then cancels those still running and
    /// returns once they have ended.
    func drive() async {
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
    }

    /// Waits for jobs or the close, and takes them.
    private func next() async -> Batch {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Batch, Never>) in
            let batch = self.state.withLock { state -> Batch? in
                switch state {
                case .idle:
                    preconditionFailure("a connection's driver runs only once it has a job")
                case .active(let jobs, _) where !jobs.isEmpty:
                    state = .active(jobs: [], waiter: nil)
                    return Batch(jobs: jobs, closed: false)
                case .active:
                    state = .active(jobs: [], waiter: continuation)
                    return nil
                case .closed(let jobs, let cancelling):
                    state = .closed(jobs: [], cancelling: cancelling)
                    return Batch(jobs: jobs, closed: true, cancel: cancelling)
                }
            }
            if let batch { continuation.resume(returning: batch) }
        }
    }
}

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
