import Testing

@testable import socket_ipc

/// `serve --exec` shares its turns between users (FairTurnQueue): a freed turn goes to the waiting user holding the
/// fewest turns, round-robin among equals, first come first served within each user; so one user's many or long runs
/// do not keep another's waiting behind them.
@Suite("serve --exec: turns shared fairly between users")
struct FairTurnQueueTests {
    /// Pops every ticket, in the order their turns come.
    static func drain(_ queue: inout FairTurnQueue<String>) -> [String] {
        var order: [String] = []
        while let (ticket, _) = queue.popNext() { order.append(ticket) }
        return order
    }

    @Test("a user with many runs queued does not keep another user's one run behind them")
    func oneUserCannotCrowdOutAnother() {
        var queue = FairTurnQueue<String>()
        for index in 1...5 { queue.append("a\(index)", user: 1000) }
        queue.append("b1", user: 1001)
        #expect(queue.count == 6)
        #expect(Self.drain(&queue) == ["a1", "b1", "a2", "a3", "a4", "a5"])
        #expect(queue.count == 0)
    }

    @Test("turns go round the users who wait, each user's runs in the order they came")
    func roundRobin() {
        var queue = FairTurnQueue<String>()
        queue.append("a1", user: 1)
        queue.append("a2", user: 1)
        queue.append("b1", user: 2)
        queue.append("a3", user: 1)
        queue.append("c1", user: 3)
        queue.append("c2", user: 3)
        #expect(queue.popNext()?.ticket == "a1")
        // A user who comes now joins the end of the round.
        queue.append("d1", user: 4)
        #expect(Self.drain(&queue) == ["b1", "c1", "a2", "d1", "c2", "a3"])
    }

    @Test("cancelled runs lose their turn, and a user whose runs were all cancelled leaves the round")
    func cancelled() {
        var queue = FairTurnQueue<String>()
        queue.append("a1", user: 1)
        queue.append("b1", user: 2)
        queue.append("a2", user: 1)
        queue.cancel("b1")
        queue.cancel("a1")
        #expect(queue.count == 1)
        #expect(Self.drain(&queue) == ["a2"])
        queue.append("b2", user: 2)
        #expect(Self.drain(&queue) == ["b2"])
    }

    @Test("a freed turn goes to the waiting user who holds the fewest, not back to one who holds the others")
    func fewestHeldFirst() {
        var queue = FairTurnQueue<String>()
        queue.append("a3", user: 1)
        queue.append("b1", user: 2)
        queue.append("a4", user: 1)
        // User 1 holds two turns, user 2 one: user 2's run goes first although user 1 is first in the round.
        let first = queue.popNext(held: [1: 2, 2: 1])
        #expect(first?.ticket == "b1" && first?.user == 2)
        // Equal holdings: the round decides.
        #expect(queue.popNext(held: [1: 2, 2: 2])?.ticket == "a3")
        #expect(queue.popNext(held: [1: 3])?.ticket == "a4")
        #expect(queue.popNext() == nil)
    }

    @Test("a cancelled run at the front of a user's queue does not cost that user its place in the round")
    func cancelledAtTheFront() {
        var queue = FairTurnQueue<String>()
        queue.append("x1", user: 9)
        queue.append("a1", user: 1)
        queue.append("b1", user: 2)
        queue.append("x2", user: 9)
        queue.cancel("x1")
        #expect(Self.drain(&queue) == ["x2", "a1", "b1"])
    }

    @Test("many cancelled runs are dropped, not kept: the order of those still waiting is unchanged")
    func manyCancelled() {
        var queue = FairTurnQueue<String>()
        let cancelledCount = 4 * FairTurnQueue<String>.compactionThreshold
        for index in 0..<cancelledCount { queue.append("x\(index)", user: 7) }
        queue.append("a1", user: 1)
        queue.append("a2", user: 1)
        queue.append("b1", user: 2)
        for index in 0..<cancelledCount { queue.cancel("x\(index)") }
        #expect(queue.count == 3)
        #expect(Self.drain(&queue) == ["a1", "b1", "a2"])
    }
}

/// ExecTurns, the semaphore around FairTurnQueue: the turns each user holds decide who gets a freed one.
@Suite("serve --exec: the turns themselves")
struct ExecTurnsTests {
    @Test("a user holding turns with more runs waiting does not get back the turn it frees while another user waits")
    func freedTurnGoesToTheUserHoldingFewest() async throws {
        let (queued, queuedEvent) = AsyncStream.makeStream(of: Void.self)
        let (granted, grantedEvent) = AsyncStream.makeStream(of: String.self)
        let turns = ExecTurns(limit: 2, waiterQueued: { queuedEvent.yield() })
        var waiters = queued.makeAsyncIterator()
        var grants = granted.makeAsyncIterator()
        // User 1000 holds both turns (long runs), and queues a third run before user 1001 queues its first.
        try await turns.acquire(user: 1000)
        try await turns.acquire(user: 1000)
        let third = Task {
            try await turns.acquire(user: 1000)
            grantedEvent.yield("1000")
        }
        _ = await waiters.next()
        let other = Task {
            try await turns.acquire(user: 1001)
            grantedEvent.yield("1001")
        }
        _ = await waiters.next()
        // User 1000's run ends: its turn goes to user 1001 (holding none), not to 1000's next run (1000 holds one).
        turns.release(user: 1000)
        #expect(await grants.next() == "1001")
        turns.release(user: 1000)
        #expect(await grants.next() == "1000")
        try await third.value
        try await other.value
        turns.release(user: 1000)
        turns.release(user: 1001)
        // Both turns are free again: two runs start at once.
        try await turns.acquire(user: nil)
        try await turns.acquire(user: nil)
        turns.release(user: nil)
        turns.release(user: nil)
    }

    @Test("a waiter cancelled before its turn holds none, and the turn goes to the next")
    func cancelledWaiter() async throws {
        let (queued, queuedEvent) = AsyncStream.makeStream(of: Void.self)
        let turns = ExecTurns(limit: 1, waiterQueued: { queuedEvent.yield() })
        var waiters = queued.makeAsyncIterator()
        try await turns.acquire(user: 1)
        let cancelled = Task { try await turns.acquire(user: 2) }
        _ = await waiters.next()
        let next = Task { try await turns.acquire(user: 3) }
        _ = await waiters.next()
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        turns.release(user: 1)
        try await next.value
        turns.release(user: 3)
    }
}
