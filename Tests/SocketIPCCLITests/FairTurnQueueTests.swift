import Testing

@testable import socket_ipc

/// `serve --exec` shares its turns between users: round-robin between the users who wait, first come first served
/// within each (FairTurnQueue), so that one user's many queued runs do not keep another's waiting behind them.
@Suite("serve --exec: turns shared fairly between users")
struct FairTurnQueueTests {
    /// Pops every ticket, in the order their turns come.
    static func drain(_ queue: inout FairTurnQueue<String>) -> [String] {
        var order: [String] = []
        while let ticket = queue.popNext() { order.append(ticket) }
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
        #expect(queue.popNext() == "a1")
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
