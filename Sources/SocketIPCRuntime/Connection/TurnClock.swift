import NIOCore

/// A read's share of the event loop in time (``ConnectionOptions/turnTime``, 2 ms), next to its share in frames
/// (``ConnectionChannelHandler/frameBudget``).
///
/// The frame budget alone let a handler that takes long per message (a server that prints each one) hold the loop for
/// 16,384 of them (a review: another connection's round trip took 68 ms at the median, up to 0.9 s, beside two peers
/// sending empty messages). As Go's scheduler asks a goroutine that ran 10 ms to yield, a read that has handed out
/// ``framesBeforeClock`` frames and taken its time gives the loop's other connections their turn. The clock is read
/// once when the read begins and then every ``framesPerClockCheck`` frames past the first ``framesBeforeClock``, so
/// that the common path costs one comparison a frame, and a read of fewer frames never yields for time: what a peer
/// sends in one write of a few hundred frames is still handed out in one turn, however slowly.
struct TurnClock {
    /// How much of the frame budget a read spends before its time counts: 1,024 (1,024 messages, or 128 frames off
    /// the common path, which cost ``ConnectionChannelHandler/controlFrameCost`` each).
    static var framesBeforeClock: Int { 1_024 }
    /// How many frames pass between two looks at the clock: 64.
    static var framesPerClockCheck: Int { 64 }

    /// When the read's share ends, in `NIODeadline` uptime nanoseconds.
    private let deadline: UInt64
    /// The frame budget below which the clock is read next.
    private var nextCheck: Int

    /// Starts the share of a read whose frame budget is `budget`, and whose time is `nanoseconds` (`UInt64.max` for
    /// none).
    @inline(__always)
    init(budget: Int, nanoseconds: UInt64) {
        if nanoseconds == .max {
            self.deadline = .max
            self.nextCheck = .min
        } else {
            self.deadline = NIODeadline.now().uptimeNanoseconds &+ nanoseconds
            self.nextCheck = budget - Self.framesBeforeClock
        }
    }

    /// Whether the read has used up its share, with `budget` frames left of its frame budget.
    @inline(__always)
    mutating func isUsedUp(_ budget: Int) -> Bool {
        if budget <= 0 { return true }
        if budget > self.nextCheck { return false }
        return self.timeIsUp(budget)
    }

    @inline(never)
    private mutating func timeIsUp(_ budget: Int) -> Bool {
        self.nextCheck = budget - Self.framesPerClockCheck
        return NIODeadline.now().uptimeNanoseconds >= self.deadline
    }
}
