import NIOCore
import Synchronization

/// Runs Swift tasks on a NIO event loop, so that a task that talks to a connection and the connection's I/O share
/// one thread: a send is written without a thread hop and a reply resumes the waiting task without waking another
/// thread. Used by ``Client/withConnection(to:configuration:handler:logger:_:)``.
///
/// Jobs are queued and run in batches, one event-loop task per batch, so that resuming many tasks at once (a read
/// that completes many requests) costs one scheduled task, not one each. One executor serves each event loop.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    let eventLoop: any EventLoop
    private let queue = Mutex<[UnownedJob]>([])
    /// The array the last batch ran from, kept for its capacity; touched only on the event loop.
    private var spare: [UnownedJob] = []
    /// The loop's poller: a job queued here, from any thread, ends its poll (the job would wait behind it).
    private let poller: EventLoopBusyPoller
    /// The loop's turn, which the tasks run here wait for after a long run of work; kept here so that finding it costs
    /// no lookup.
    let turn: EventLoopTurn

    private init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.poller = EventLoopBusyPoller.shared(for: eventLoop)
        self.turn = EventLoopTurn.shared(for: eventLoop)
    }

    private static let executors = PerEventLoop { EventLoopTaskExecutor($0) }

    /// The one of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopTaskExecutor {
        self.executors(eventLoop)
    }


    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let first = self.queue.withLock { queue -> Bool in
            queue.append(job)
            return queue.count == 1
        }
        if first {
            self.eventLoop.execute { self.runQueuedJobs() }
            // After the work is queued: a poll that sees this ends and goes on behind the work.
            self.poller.workQueued()
        }
    }

    private func runQueuedJobs() {
        var batch = self.spare
        self.spare = []
        self.queue.withLock { swap(&$0, &batch) }
        let executor = self.asUnownedTaskExecutor()
        for job in batch {
            job.runSynchronously(on: executor)
        }
        batch.removeAll(keepingCapacity: true)
        self.spare = batch
    }
}
