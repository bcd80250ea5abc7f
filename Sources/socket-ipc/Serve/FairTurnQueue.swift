import NIOCore

/// Who waits for a turn of `serve --exec`, by user: turns go round the users who wait, one each in turn, and to each
/// user's runs in the order they came. So one user's many runs cannot keep another user's single run waiting behind
/// all of them; within one user it is first come, first served. This is fair queueing by round-robin between
/// sources, as Nagle proposed for packet switches (RFC 970), with the peer's uid as the source.
///
/// A value without I/O; ``ExecTurns`` keeps it under its lock. Every operation is O(1) amortized: a cancelled ticket
/// is dropped when its turn comes up, or by a compaction once cancelled tickets are half of those queued, so that
/// however many waiters a user cancels the queue neither slows down nor keeps them.
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

    /// The ticket whose turn it is: the first of the next user in the round, who then goes to the end of the round
    /// if it has more; `nil` when nobody waits.
    mutating func popNext() -> Ticket? {
        while let user = self.rotation.popFirst() {
            guard let ticket = self.queues[user]?.popFirst() else {
                preconditionFailure("a user in the round has no ticket")
            }
            self.queued -= 1
            if self.queues[user]!.isEmpty {
                self.queues[user] = nil
            } else {
                self.rotation.append(user)
            }
            if self.cancelled.remove(ticket) != nil { continue }
            return ticket
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
