import Synchronization
import Testing

@testable import SocketIPCRuntime

/// The async work of one connection (``ConnectionTasks``): jobs kept for the end of a read batch, started at once
/// in a task that runs on the calling thread, or run cancelled when the connection closes first.
@Suite("Connection tasks", .timeLimit(.minutes(5)))
struct ConnectionTasksTests {
    final class Log: Sendable {
        let entries = Mutex<[String]>([])
        func add(_ entry: String) { self.entries.withLock { $0.append(entry) } }
        var all: [String] { self.entries.withLock { $0 } }
    }

    @Test("jobs kept for the end of a read batch start in order when it ends, each running here up to its first suspension")
    func deferredJobsStartImmediately() async {
        let tasks = ConnectionTasks(owner: .connection)
        let log = Log()
        let finished = AsyncStream<Void>.makeStream()
        tasks.runAtEndOfReadBatch({ log.add("first") }, on: globalConcurrentExecutor)
        tasks.runAtEndOfReadBatch(
            {
                log.add("second")
                await Task.yield()
                log.add("second, after a suspension")
                finished.continuation.yield()
            },
            on: globalConcurrentExecutor
        )
        #expect(log.all.isEmpty)
        tasks.startDeferred()
        // Both ran synchronously up to their first suspension, in the order they were kept.
        #expect(Array(log.all.prefix(2)) == ["first", "second"])
        var iterator = finished.stream.makeAsyncIterator()
        await iterator.next()
        #expect(log.all == ["first", "second", "second, after a suspension"])
        tasks.close()
    }

    @Test("a job kept for the end of a read batch that ends with the connection's close runs, cancelled")
    func deferredJobRunsCancelledAfterClose() async {
        let tasks = ConnectionTasks(owner: .connection)
        let cancelled = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            tasks.runAtEndOfReadBatch({ continuation.resume(returning: Task.isCancelled) }, on: globalConcurrentExecutor)
            tasks.close()
        }
        #expect(cancelled)
        // Nothing is left to start.
        tasks.startDeferred()
    }
}
