import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import SocketIPCServices

/// `ServiceContext.sleep(for:)`: a sleep on an event loop's timer whose cancellation cancels the timer, so that a
/// sleep cut short gives its memory back at once (a cancelled `Task.sleep` keeps it until its time: swiftlang/swift#60441).
@Suite("A handler's sleep cut short cancels its timer", .timeLimit(.minutes(1)))
struct HandlerSleepTests {
    /// Runs `body` with an event loop of its own, shut down afterwards.
    private func withEventLoop<Result>(_ body: (any EventLoop) async throws -> Result) async throws -> Result {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let outcome = await Swift.Result { try await body(group.next()) }
        try await group.shutdownGracefully()
        return try outcome.get()
    }

    @Test("a sleep of a million seconds, cancelled, throws CancellationError and its scheduled task is cancelled, not kept until its time")
    func cancelledSleepCancelsItsTimer() async throws {
        try await self.withEventLoop { loop in
            let (scheduled, scheduledContinuation) = AsyncStream<Scheduled<Void>>.makeStream()
            let sleeper = Task {
                try await HandlerSleep.sleep(
                    for: .seconds(1_000_000),
                    schedule: { delay, body in loop.scheduleTask(in: .init(delay), body) },
                    observe: { scheduledContinuation.yield($0) }
                )
            }
            var timers = scheduled.makeAsyncIterator()
            let timer = try #require(await timers.next())
            sleeper.cancel()
            await #expect(throws: CancellationError.self) { try await sleeper.value }
            // A scheduled task cancelled before its time fails with `cancelled`; one kept would still be pending.
            await #expect(throws: EventLoopError.cancelled) { try await timer.futureResult.get() }
        }
    }

    @Test("a sleep whose time is up returns; one in a task cancelled before it starts throws at once and schedules nothing")
    func timeUpAndCancelledFirst() async throws {
        try await self.withEventLoop { loop in
            let scheduledCount = Mutex(0)
            let schedule: (Duration, @escaping @Sendable () -> Void) -> Scheduled<Void> = { delay, body in
                scheduledCount.withLock { $0 += 1 }
                return loop.scheduleTask(in: .init(delay), body)
            }
            try await HandlerSleep.sleep(for: .milliseconds(1), schedule: schedule)
            #expect(scheduledCount.withLock { $0 } == 1)
            let cancelledFirst = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                try await HandlerSleep.sleep(for: .seconds(60), schedule: schedule)
            }
            await #expect(throws: CancellationError.self) { try await cancelledFirst.value }
            #expect(scheduledCount.withLock { $0 } == 1)
        }
    }

    @Test("a sleep whose event loop shuts down first ends with the loop's error rather than never")
    func loopShutDown() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let (scheduled, scheduledContinuation) = AsyncStream<Void>.makeStream()
        let sleeper = Task {
            try await HandlerSleep.sleep(
                for: .seconds(60),
                schedule: { delay, body in loop.scheduleTask(in: .init(delay), body) },
                observe: { _ in scheduledContinuation.yield() }
            )
        }
        var timers = scheduled.makeAsyncIterator()
        _ = await timers.next()
        try await group.shutdownGracefully()
        // Before, the sleep waited for its whole minute, and longer: the shut-down loop never ran its timer.
        await #expect(throws: EventLoopError.self) { try await sleeper.value }
    }
}
