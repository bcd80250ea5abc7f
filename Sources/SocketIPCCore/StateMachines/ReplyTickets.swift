/// Names one of the peer's requests while it is unanswered, so that it is answered at most once.
///
/// The request's id cannot serve: a peer may reuse an id while an earlier request with it waits. A ticket names a
/// slot of ``ReplyTickets`` and the generation of that slot when the request took it; once answered, the slot's
/// generation moves on, and the ticket no longer matches.
@usableFromInline
package struct ReplyTicket: Hashable, Sendable {
    @usableFromInline
    let slot: UInt32
    @usableFromInline
    let generation: UInt32

    @usableFromInline
    init(slot: UInt32, generation: UInt32) {
        self.slot = slot
        self.generation = generation
    }

    /// A ticket that answers nothing: what a request received once the connection is closed gets.
    @usableFromInline
    package static let none = ReplyTicket(slot: .max, generation: 0)
}

/// The peer's unanswered requests, as slots that their ``ReplyTicket``s name: a second answer to one request
/// (a handler that completes its `Reply` twice) finds its ticket spent, and is neither counted nor sent.
///
/// A slot's generation is odd while a request holds it and even while it is free. Slots are reused, so there are
/// never more of them than the most requests unanswered at once (bounded by `maximumConcurrentRequests`). Each slot
/// also keeps the size its request counts against `maximumUnansweredRequestBytes` (0 for a small one), so that its
/// own answer gives back its own bytes: kept by id, a small request that reused a large one's id gave back the large
/// one's bytes when answered first (found by a review: 120 MiB of 4 MiB requests held against a 16 MiB limit).
///
/// Slot 0 is kept inline and the others in arrays made only for a second request unanswered at once: a connection
/// that has one request out at a time, most of them, allocates nothing for its tickets (the three arrays held about
/// 112 bytes of every idle connection that had made a request: BENCHMARKS.md, W6).
@usableFromInline
struct ReplyTickets {
    /// Slot 0's generation (0: never taken, free) and the bytes its request counts.
    @usableFromInline
    var firstGeneration: UInt32 = 0
    @usableFromInline
    var firstCounted = 0
    /// Slots 1 and up, at index `slot - 1`.
    @usableFromInline
    var generations: [UInt32] = []
    @usableFromInline
    var counted: [Int] = []
    /// Free slots among 1 and up.
    @usableFromInline
    var free: [UInt32] = []

    @inlinable
    init() {}

    /// How many slots there are: never more than the most requests unanswered at once.
    var slotCount: Int { (self.firstGeneration == 0 ? 0 : 1) + self.generations.count }

    /// Takes a slot for a request just received that counts `bytes` against the byte limit (0 if it does not).
    @inlinable
    mutating func take(counting bytes: Int = 0) -> ReplyTicket {
        if self.firstGeneration & 1 == 0 {
            self.firstGeneration &+= 1
            self.firstCounted = bytes
            return ReplyTicket(slot: 0, generation: self.firstGeneration)
        }
        if let slot = self.free.popLast() {
            let index = Int(slot) - 1
            self.generations[index] &+= 1
            self.counted[index] = bytes
            return ReplyTicket(slot: slot, generation: self.generations[index])
        }
        self.generations.append(1)
        self.counted.append(bytes)
        return ReplyTicket(slot: UInt32(truncatingIfNeeded: self.generations.count), generation: 1)
    }

    /// Frees the ticket's slot: the bytes its request counted if the ticket held it, `nil` if it was spent (answered
    /// before) or never issued here.
    @inlinable
    mutating func redeem(_ ticket: ReplyTicket) -> Int? {
        guard ticket.generation & 1 == 1 else { return nil }
        if ticket.slot == 0 {
            guard self.firstGeneration == ticket.generation else { return nil }
            self.firstGeneration &+= 1
            return self.firstCounted
        }
        let index = Int(ticket.slot) - 1
        guard index < self.generations.count, self.generations[index] == ticket.generation else { return nil }
        self.generations[index] &+= 1
        self.free.append(ticket.slot)
        return self.counted[index]
    }
}
