import NIOCore

/// Runs Swift tasks on a NIO event loop, so that a task that talks to a connection and the connection's I/O share
/// one thread: a send is written without a thread hop and a reply resumes the waiting task without waking another
/// thread. Used by ``Client/withConnection(to:configuration:handler:_:)``.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
