@testable import SocketIPCRuntime
import Testing

/// The closing threads' bookkeeping, charged by user (``PassedDescriptorCloseQueue``): a user whose closes never return
/// holds at most its share of the threads, the other users' closes still get threads, and a user with too many closes
/// waiting is over its bound until they come down.
@Suite("Closes of passed descriptors, charged by user")
struct PassedDescriptorCloseQueueTests {
    /// The time the tests' closes are queued and end at, unless they say otherwise.
    private let start = ContinuousClock.now

    private func makeQueue() -> PassedDescriptorCloseQueue {
        PassedDescriptorCloseQueue(
            maximumThreads: 6,
            maximumThreadsPerUser: 2,
            maximumWaitingPerUser: 4,
            stallTime: .seconds(1),
            maximumReadsPerUser: 2,
            maximumHeldPerUser: 8
        )
    }

    @Test("a user whose closes never end holds at most its share of the threads, and another user's close gets one")
    func perUserThreads() {
        var queue = self.makeQueue()
        // User 1 passes 5 descriptors: two threads, one for each it may close at once.
        #expect(queue.enqueue([10, 11, 12, 13, 14], by: 1, now: self.start) == 2)
        let first = queue.next()
        let second = queue.next()
        #expect(first?.descriptor == 10 && first?.user == 1 && first?.threadsToStart == 0)
        #expect(second?.descriptor == 11 && second?.user == 1 && second?.threadsToStart == 0)
        // Both closes hang: user 1's others wait in its queue, and no third thread is asked for them.
        #expect(queue.threads == 2 && queue.busy == 2)
        #expect(queue.waiting(by: 1) == 5 && queue.isOverBound(1))
        // User 2's descriptor gets a thread of its own.
        #expect(queue.enqueue([20], by: 2, now: self.start) == 1)
        let third = queue.next()
        #expect(third?.descriptor == 20 && third?.user == 2)
        #expect(queue.closed(by: 2, now: self.start) == false)
        #expect(queue.waiting(by: 2) == 0 && !queue.isOverBound(2))
        // Nothing left that the thread may take: it ends.
        #expect(queue.next() == nil)
        #expect(queue.threads == 2)
    }

    @Test("users take turns on a thread, and a close that ends brings its user under its bound once")
    func turnsAndBound() {
        var queue = PassedDescriptorCloseQueue(
            maximumThreads: 1,
            maximumThreadsPerUser: 1,
            maximumWaitingPerUser: 2,
            stallTime: .seconds(1),
            maximumReadsPerUser: 2,
            maximumHeldPerUser: 8
        )
        #expect(queue.enqueue([10, 11], by: 1, now: self.start) == 1)
        #expect(queue.enqueue([20, 21], by: nil, now: self.start) == 0)
        #expect(queue.isOverBound(1) && queue.isOverBound(nil))
        var order: [Int32] = []
        var cameUnder: [Bool] = []
        while let next = queue.next() {
            order.append(next.descriptor)
            cameUnder.append(queue.closed(by: next.user, now: self.start))
        }
        #expect(order == [10, 20, 11, 21])
        #expect(cameUnder == [true, true, false, false])
        #expect(queue.threads == 0 && queue.busy == 0)
        #expect(queue.waiting(by: 1) == 0 && queue.waiting(by: nil) == 0)
    }

    @Test("a thread that takes a close asks for the thread that could not be started before, so no descriptor waits behind it")
    func noDescriptorWaitsBehindAClose() {
        var queue = self.makeQueue()
        #expect(queue.enqueue([10], by: 1, now: self.start) == 1)
        #expect(queue.enqueue([20], by: 2, now: self.start) == 1)
        // The second thread could not be started (the process was at its limit of threads).
        queue.threadNotStarted()
        // The one thread takes user 1's, whose close may never end: user 2's needs a thread of its own.
        let first = queue.next()
        #expect(first?.descriptor == 10 && first?.threadsToStart == 1)
        #expect(queue.threads == 2)
        #expect(queue.next()?.descriptor == 20)
    }

    @Test("never more threads than the maximum, and a thread that could not start is asked for again")
    func threadLimit() {
        var queue = self.makeQueue()
        var asked = 0
        for user in UInt32(1)...UInt32(4) { asked += queue.enqueue([Int32(user) * 10, Int32(user) * 10 + 1], by: user, now: self.start) }
        #expect(asked == 6 && queue.threads == 6)
        queue.threadNotStarted()
        #expect(queue.threads == 5)
        #expect(queue.enqueue([50], by: 5, now: self.start) == 1)
        #expect(queue.threads == 6)
    }

    @Test("a user over its bound is stalled once none of its closes has ended for the stall time; a close that ends starts it again")
    func stalled() {
        var queue = self.makeQueue()
        _ = queue.enqueue([10, 11, 12, 13, 14, 15], by: 1, now: self.start)
        _ = queue.enqueue([20], by: 2, now: self.start)
        #expect(!queue.isStalled(1, now: self.start + .milliseconds(999)))
        #expect(queue.isStalled(1, now: self.start + .seconds(1)))
        // User 2 is under its bound, however long its close takes.
        #expect(!queue.isStalled(2, now: self.start + .seconds(60)))
        // One of user 1's closes ends after 2 s: still over its bound (5 wait), but progressing.
        let first = queue.next()
        #expect(first?.user == 1)
        #expect(queue.closed(by: 1, now: self.start + .seconds(2)) == false)
        #expect(queue.isOverBound(1))
        #expect(!queue.isStalled(1, now: self.start + .milliseconds(2_500)))
        #expect(queue.isStalled(1, now: self.start + .seconds(3)))
    }

    @Test("the stall time counts from when the user went over its bound, not from a slow close before it")
    func stallCountsFromTheCrossing() {
        var queue = self.makeQueue()
        // One close that takes long, then, 10 s later, a burst that takes the user over its bound.
        _ = queue.enqueue([10], by: 1, now: self.start)
        _ = queue.next()
        _ = queue.enqueue([11, 12, 13, 14], by: 1, now: self.start + .seconds(10))
        #expect(queue.isOverBound(1))
        #expect(!queue.isStalled(1, now: self.start + .seconds(10)))
        #expect(queue.isStalled(1, now: self.start + .seconds(11)))
    }

    @Test("threads that could not be started are asked for again")
    func threadsWantedAgain() {
        var queue = self.makeQueue()
        #expect(queue.enqueue([10, 11], by: 1, now: self.start) == 2)
        queue.threadNotStarted()
        queue.threadNotStarted()
        #expect(queue.threads == 0)
        #expect(queue.threadsWanted() == 2)
        #expect(queue.threadsWanted() == 0)
    }

    @Test("at most two reads of a user's connections at once, none while the user is over its bound, each user apart")
    func readsByUser() {
        var queue = self.makeQueue()
        let first = queue.beginRead(1)
        let second = queue.beginRead(1)
        #expect(first && second)
        // A third connection of user 1 waits: one read may bring 253 descriptors, whatever the bound.
        let third = queue.beginRead(1)
        #expect(!third && !queue.mayBeginRead(1))
        #expect(queue.reads(by: 1) == 2)
        // Another user reads meanwhile, and so does the unknown user.
        let otherUser = queue.beginRead(2)
        let unknownUser = queue.beginRead(nil)
        #expect(otherUser && unknownUser)
        queue.endRead(1)
        #expect(queue.mayBeginRead(1) && queue.reads(by: 1) == 1)
        // The read that ended brought 4 descriptors that the closes queue: over the bound, no read begins.
        _ = queue.enqueue([10, 11, 12, 13], by: 1, now: self.start)
        let overBound = queue.beginRead(1)
        #expect(queue.isOverBound(1) && !overBound)
        queue.endRead(1)
        #expect(queue.reads(by: 1) == 0 && !queue.mayBeginRead(1))
        // A close ends: under the bound again, reads begin.
        let next = queue.next()
        #expect(next?.user == 1)
        let cameUnder = queue.closed(by: 1, now: self.start)
        #expect(cameUnder)
        let underBound = queue.beginRead(1)
        #expect(underBound)
        queue.endRead(1)
        queue.endRead(2)
        queue.endRead(nil)
        #expect(queue.reads(by: 1) == 0 && queue.reads(by: 2) == 0 && queue.reads(by: nil) == 0)
    }

    @Test("descriptors a user's connections hold count with its waiting closes, and a pause ends once")
    func heldCountWithWaiting() {
        var queue = self.makeQueue()
        // Held 5 of 8: reads go on.
        let ended1 = queue.adjustHeld(5, of: 1)
        #expect(ended1 == false)
        #expect(queue.mayBeginRead(1) && queue.heldDescriptors(by: 1) == 5)
        // 8 held: paused, though no close waits; another user is not.
        let ended2 = queue.adjustHeld(3, of: 1)
        #expect(ended2 == false)
        #expect(queue.isPaused(1) && !queue.mayBeginRead(1) && !queue.isOverBound(1))
        #expect(queue.mayBeginRead(2))
        // The handler takes one: the pause ends.
        let ended3 = queue.adjustHeld(-1, of: 1)
        #expect(ended3)
        #expect(queue.mayBeginRead(1))
        // The connection closes: the 7 it held are queued to be closed, then counted off; the total never dips.
        _ = queue.enqueue([10, 11, 12, 13, 14, 15, 16], by: 1, now: self.start)
        #expect(queue.isPaused(1))
        let ended4 = queue.adjustHeld(-7, of: 1)
        #expect(ended4 == false)
        #expect(queue.isPaused(1) && queue.heldDescriptors(by: 1) == 0)
        // A close's count comes before the read's that it counts off: 0 for the moment, then even.
        let ended5 = queue.adjustHeld(-3, of: 2)
        #expect(ended5 == false && queue.heldDescriptors(by: 2) == 0)
        let ended6 = queue.adjustHeld(3, of: 2)
        #expect(ended6 == false && queue.heldDescriptors(by: 2) == 0 && queue.mayBeginRead(2))
        let ended7 = queue.adjustHeld(8, of: 2)
        #expect(ended7 == false && queue.isPaused(2))
    }

    @Test("no descriptors, no thread")
    func empty() {
        var queue = self.makeQueue()
        #expect(queue.enqueue([], by: 1, now: self.start) == 0)
        #expect(queue.threads == 0 && queue.waiting(by: 1) == 0)
    }
}

extension PassedDescriptorCloseQueueTests {
    @Test("a peer whose uid is that of one of this side's own accounts (4294967294, a valid uid) is charged as an unknown peer, never to this side's own account")
    func peerNeverSharesAnOwnAccount() {
        #expect(PassedDescriptorCloser.account(ofPeer: 1000) == 1000)
        #expect(PassedDescriptorCloser.account(ofPeer: 0) == 0)
        #expect(PassedDescriptorCloser.account(ofPeer: nil) == nil)
        #expect(PassedDescriptorCloser.account(ofPeer: UInt32.max - 1) == nil)
        #expect(PassedDescriptorCloser.account(ofPeer: UInt32.max) == nil)
        #expect(PassedDescriptorCloser.account(ofPeer: UInt32.max - 1) != PassedDescriptorCloser.ownSockets)
    }
}
