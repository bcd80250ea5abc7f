import NIOCore
import NIOPosix
import Testing

@testable import SocketIPCRuntime

/// The event loop's turn: the budget that long runs of sends on one loop share between two of its polls.
@Suite("The event loop's turn", .timeLimit(.minutes(1)))
struct EventLoopTurnTests {
    @Test("the loop's budget counts every sender's messages and bytes since its last poll, and the poll renews it")
    func budgetSharedUntilThePoll() async throws {
        // A loop of its own, so that no other test's streams spend from its budget meanwhile. (The tables of
        // per-loop objects keep it, and so its address, for the life of the process.)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let turn = EventLoopTurn.shared(for: loop)
        let budget = (messages: 1024, bytes: 4096)
        let outcome = await Task(executorPreference: EventLoopTaskExecutor.shared(for: loop)) { () -> [String] in
            var seen: [String] = []
            // Many senders, each below a run of its own, add up: the 1,024th message of all of them uses it up.
            let early = (0..<1023).filter { _ in turn.spend(bytes: 1, budget: budget) }.count
            seen.append("early \(early)")
            seen.append("1024th \(turn.spend(bytes: 1, budget: budget))")
            seen.append("after \(turn.spend(bytes: 1, budget: budget))")
            await turn.wait()
            seen.append("after the poll \(turn.spend(bytes: 1, budget: budget))")
            // Bytes count as well: 4,096 of them in two messages.
            seen.append("bytes \(turn.spend(bytes: 2048, budget: budget)) \(turn.spend(bytes: 2047, budget: budget))")
            await turn.wait()
            seen.append("renewed \(turn.spend(bytes: 4095, budget: budget))")
            return seen
        }.value
        try await group.shutdownGracefully()
        #expect(
            outcome == [
                "early 0", "1024th true", "after true", "after the poll false", "bytes false true", "renewed false",
            ]
        )
    }
}
