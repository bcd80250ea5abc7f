import NIOCore

/// Who waits for a turn of `serve --exec`, by user: a freed turn goes to the waiting user who holds the fewest turns
/// at that moment, and among users holding as many, to the one whose turn comes first in the round; within one user,
/// runs go in the order they came. So one user's many runs, or long ones, cannot keep another user's runs waiting
/// behind them: this is fair queueing between sources, round-robin as Nagle proposed for packet switches (RFC 970),
/// with the peer's uid as the source and the turns each user holds weighed as a max-min fair share is.
///
/// A value without I/O; ``ExecTurns`` keeps it under its lock. A cancelled ticket is dropped when it comes to the
/// front of its user's queue, or by a compaction once cancelled tickets are half of those queued, so that however
/// many waiters a user cancels the queue neither slows down nor keeps them. Choosing the next user takes time in
/// proportion to the number of users waiting (uids, which a peer cannot make up).
struct FairTurnQueue<Ticket: Hashable> {
    /// Each waiting user's tickets, in the order they came (cancelled ones included until dropped).
    private var queues: [UInt32: CircularBuffer<Ticket>] = [:]
    /// The users with tickets queued, in the order their turns come round.
    private var rotation = CircularBuffer<UInt32>()
    /// Tickets cancelled but still in ``queues``.
    private var cancelled: Set<Ticket> = []
    /// Tickets in ``queues``, cancelled ones included.
    private var queued = 0

    /// How many tickets wait (not counting cancelled ones).
    var count: Int { self.queued - self.cancelled.count }

    /// Cancelled tickets kept at most before a compaction may drop them (it runs once they are also half of all).
    static var compactionThreshold: Int { 512 }

    /// `ticket` of `user` waits: after the user's earlier tickets; a user who had none joins the end of the round.
    mutating func append(_ ticket: Ticket, user: UInt32) {
        if self.queues[user] == nil {
            self.queues[user] = CircularBuffer()
            self.rotation.append(user)
        }
        self.queues[user]!.append(ticket)
        self.queued += 1
    }

    /// The ticket whose turn it is, and its user: of the users who wait, the one holding the fewest turns now
    /// (`held`, by user; absent is none), the earliest in the round among equals; that user goes to the end of the
    /// round if it has more tickets. `nil` when nobody waits.
    mutating func popNext(held: [UInt32: Int] = [:]) -> (ticket: Ticket, user: UInt32)? {
        while !self.rotation.isEmpty {
            var chosen = self.rotation.startIndex
            var least = Int.max
            for index in self.rotation.indices {
                let turns = held[self.rotation[index]] ?? 0
                if turns < least {
                    chosen = index
                    least = turns
                    if turns == 0 { break }
                }
            }
            let user = self.rotation.remove(at: chosen)
            guard var queue = self.queues.removeValue(forKey: user) else {
                preconditionFailure("a user in the round has no ticket")
            }
            // Cancelled tickets at the front go first, so that they do not cost the user its place.
            while let first = queue.first, self.cancelled.remove(first) != nil {
                queue.removeFirst()
                self.queued -= 1
            }
            guard let ticket = queue.popFirst() else { continue }
            self.queued -= 1
            if !queue.isEmpty {
                self.queues[user] = queue
                self.rotation.append(user)
            }
            return (ticket, user)
        }
        return nil
    }

    /// `ticket`, queued and not yet handed out by ``popNext()``, no longer waits (its waiter was cancelled).
    mutating func cancel(_ ticket: Ticket) {
        self.cancelled.insert(ticket)
        if self.cancelled.count >= Self.compactionThreshold, self.cancelled.count * 2 >= self.queued {
            self.compact()
        }
    }

    /// Drops every cancelled ticket, and the users left with none.
    private mutating func compact() {
        for (user, queue) in self.queues {
            let kept = queue.filter { !self.cancelled.contains($0) }
            self.queues[user] = kept.isEmpty ? nil : CircularBuffer(kept)
        }
        self.rotation = CircularBuffer(self.rotation.filter { self.queues[$0] != nil })
        self.queued -= self.cancelled.count
        self.cancelled.removeAll()
    }
}
