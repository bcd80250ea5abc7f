import NIOCore
import NIOPosix
import SocketIPC
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// Tasks off the event loop (a handler with `runsHandlersOnEventLoop` off, a caller's task) that read or write a
/// stream without ever waiting give the executor's other tasks a turn every `CallStream.offLoopRunLength` messages,
/// as Tokio's cooperative budget does: the global executor never preempts a task, and a review's peer that opened
/// 1,000 streams on `socket-ipc serve` kept another user's call waiting for 25 s.
@Suite("Off the event loop, long runs of stream messages give other tasks a turn", .timeLimit(.minutes(2)))
struct OffLoopTurnTests {
    enum Burst: ServiceMethod {
        static let name = "turn.burst"
        typealias Request = Int
        typealias Response = Int
    }

    enum Upload: ServiceMethod {
        static let name = "turn.upload"
        typealias Request = Int
        typealias Response = Int
    }

    enum Barrier: ServiceMethod {
        static let name = "turn.barrier"
        typealias Request = Int
        typealias Response = Int
    }

    @Test("a reader whose 2,000 messages are all here lets a task waiting on its executor run after 128 of them, not after all")
    func readerGivesTurns() async throws {
        let (sent, sentContinuation) = AsyncStream<Void>.makeStream()
        var router = ServiceRouter()
        router.registerServerStreaming(Burst.self) { count, writer, _ in
            for value in 0..<count { try await writer.write(value) }
            sentContinuation.yield()
        }
        // Answers once the burst is written: its answer comes after the burst's messages on the connection, so the
        // caller has them all when it has the answer.
        router.register(Barrier.self) { value, _ in
            for await _ in sent { break }
            return value
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // One thread for the reader and the task that waits for a turn: only the reader's yields let it run.
        let executor = EventLoopTaskExecutor.shared(for: group.next())
        let outcome = await Result { try await Self.readBurst(on: executor, router: router) }
        try await group.shutdownGracefully()
        let (readBeforeTurn, total) = try outcome.get()
        #expect(total == 2_000)
        // Before, 2,000: the other task ran only once the reader had nothing left.
        #expect(readBeforeTurn <= 128, "the waiting task ran after \(readBeforeTurn) of \(total) messages")
    }

    @Test("a writer with credit and room for all its 2,000 messages lets a task waiting on its executor run after 128 of them, not after all")
    func writerGivesTurns() async throws {
        var router = ServiceRouter()
        router.registerClientStreaming(Upload.self) { stream, _ in
            var count = 0
            for try await _ in stream { count += 1 }
            return count
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let executor = EventLoopTaskExecutor.shared(for: group.next())
        let outcome = await Result {
            try await withServiceTestServer(router: router) { _, path in
                try await Client.withConnection(to: path) { connection in
                    try await withTaskExecutorPreference(executor) {
                        let written = SharedCount()
                        let turn = Mutex<Task<Int, Never>?>(nil)
                        let received = try await connection.clientStreaming(Upload.self) { writer in
                            turn.withLock { $0 = Task(executorPreference: executor) { written.value } }
                            // 13 bytes each: within the call's window and far below the write queue's watermark.
                            for value in 0..<2_000 {
                                try await writer.write(value)
                                written.add()
                            }
                        }
                        let task = try #require(turn.withLock { $0 })
                        return (await task.value, received)
                    }
                }
            }
        }
        try await group.shutdownGracefully()
        let (writtenBeforeTurn, received) = try outcome.get()
        #expect(received == 2_000)
        // Before, 2,000: the other task ran only once the writer was done.
        #expect(writtenBeforeTurn <= 128, "the waiting task ran after \(writtenBeforeTurn) of 2,000 messages")
    }

    /// Reads a burst of 2,000 messages on `executor`, all received before the first is read, with another task
    /// waiting for a turn on it: returns how many messages had been read when that task ran, and how many in all.
    private static func readBurst(
        on executor: EventLoopTaskExecutor,
        router: ServiceRouter
    ) async throws -> (readBeforeTurn: Int, total: Int) {
        try await withServiceTestServer(router: router) { _, path in
            try await Client.withConnection(to: path) { connection in
                try await withTaskExecutorPreference(executor) {
                    try await connection.serverStreaming(Burst.self, 2_000) { stream in
                        // 13 bytes each: all 2,000 fit in the call's window of 64 KiB, no credit needed.
                        _ = try await connection.call(Barrier.self, 1)
                        let read = SharedCount()
                        let turn = Task(executorPreference: executor) { read.value }
                        for try await _ in stream { read.add() }
                        return (await turn.value, read.value)
                    }
                }
            }
        }
    }
}

/// A count that tasks share.
private final class SharedCount: Sendable {
    private let count = Atomic(0)

    /// Adds one.
    func add() { self.count.add(1, ordering: .relaxed) }

    /// The count.
    var value: Int { self.count.load(ordering: .relaxed) }
}
