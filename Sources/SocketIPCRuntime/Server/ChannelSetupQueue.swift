import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

/// Hands the sockets that the accepting thread accepted to the event loops, a few per loop at a time, in the loops'
/// I/O turns, and holds the accepting thread back while too many wait.
///
/// A task submitted to a SwiftNIO event loop runs before the loop looks at its sockets again: the loop runs tasks
/// until none is left, then polls. A thread that accepts connections as fast as peers make them, and submits each
/// one's set-up as a task, so keeps the loops from their sockets for as long as the peers go on (a review: one user
/// that connected and closed in a loop held every connection already open for the whole attack, 11–14 s, and new
/// peers' hellos unread until their handshake timeout). So each loop takes its set-ups in its turns after a poll
/// (``EventLoopTurn``, whose pipe the loop polls as one more socket among its others): at most ``setupsPerTurn`` per
/// turn, and the accepting thread accepts nothing more while every loop has ``limitPerLoop`` waiting (the kernel's
/// listen backlog holds the rest, and connecting peers wait there, as they do for any server that is busy). As NIO's
/// own `ServerSocketChannel` accepts at most `maxMessagesPerRead` connections per I/O turn.
final class ChannelSetupQueue: @unchecked Sendable {
    /// Sets up one accepted connection on the event loop it is given.
    typealias Setup = @Sendable (any EventLoop) -> Void

    /// The queue of the process-wide event loops (`MultiThreadedEventLoopGroup.singleton`).
    static let shared = ChannelSetupQueue(group: MultiThreadedEventLoopGroup.singleton)

    /// The most set-ups one loop runs in one I/O turn: 16.
    static let setupsPerTurn = 16

    /// The set-ups of one event loop, run in its turns after a poll (``EventLoopTurn/afterPoll(_:)``).
    private final class Inbox: Sendable {
        let eventLoop: any EventLoop
        /// Its place in the queue's ``ChannelSetupQueue/inboxes`` and `waiting`.
        let index: Int
        /// The set-ups waiting, and whether a turn is asked for them already.
        let pending = Mutex<(setups: CircularBuffer<Setup>, woken: Bool)>((CircularBuffer(), false))
        unowned let queue: ChannelSetupQueue

        init(eventLoop: any EventLoop, index: Int, queue: ChannelSetupQueue) {
            self.eventLoop = eventLoop
            self.index = index
            self.queue = queue
        }

        /// Asks the loop for a turn after its next poll, from any thread: one small task, which only asks (at most one
        /// is queued at a time, so the tasks cannot keep the loop from its sockets).
        func wake() {
            self.eventLoop.execute { self.askForTurn() }
        }

        /// On the loop.
        private func askForTurn() {
            EventLoopTurn.shared(for: self.eventLoop).afterPoll { self.runTurn() }
        }

        /// Runs up to ``setupsPerTurn`` set-ups, and asks for another turn if more wait: the next ones run after the
        /// loop's next poll, after its sockets. On the loop.
        private func runTurn() {
            let (turn, more) = self.pending.withLock { pending in
                var turn: [Setup] = []
                while turn.count < ChannelSetupQueue.setupsPerTurn, let setup = pending.setups.popFirst() {
                    turn.append(setup)
                }
                pending.woken = !pending.setups.isEmpty
                return (turn, pending.woken)
            }
            self.queue.taken(turn.count, from: self)
            for setup in turn { setup(self.eventLoop) }
            if more { self.askForTurn() }
        }
    }

    /// One per event loop; set once, in `init`.
    private var inboxes: [Inbox] = []
    /// The most set-ups waiting for one loop: 64. The accepting thread waits while every loop has as many, so that
    /// a loop held up (a slow handler) takes no more, and the others go on taking theirs.
    static let limitPerLoop = 64
    /// Whether some loop has fewer than ``limitPerLoop`` set-ups waiting; with ``waiting`` and ``next``, under its
    /// lock.
    private let room = ConditionLock(value: true)
    /// The set-ups waiting, per loop (as ``inboxes``); under `room`'s lock.
    private var waiting: [Int] = []
    /// The loop to try first for the next set-up; under `room`'s lock.
    private var next = 0

    init(group: MultiThreadedEventLoopGroup) {
        var loops: [any EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        self.inboxes = loops.enumerated().map { Inbox(eventLoop: $1, index: $0, queue: self) }
        self.waiting = Array(repeating: 0, count: self.inboxes.count)
    }

    /// Queues `setup` for the next event loop in turn that has room (any, if none has); from any thread, never waits.
    func enqueue(_ setup: @escaping Setup) {
        self.room.lock()
        let count = self.inboxes.count
        var index = self.next % count
        for offset in 0..<count where self.waiting[(self.next + offset) % count] < Self.limitPerLoop {
            index = (self.next + offset) % count
            break
        }
        self.next = index + 1
        self.waiting[index] += 1
        self.room.unlock(withValue: self.hasRoom)
        let inbox = self.inboxes[index]
        let wake = inbox.pending.withLock { pending in
            pending.setups.append(setup)
            if pending.woken { return false }
            pending.woken = true
            return true
        }
        if wake { inbox.wake() }
    }

    /// Returns once some loop has fewer than ``limitPerLoop`` set-ups waiting, or once `stopping` says the caller
    /// stops (looked at every 100 ms while the queue is full): the accepting thread calls it before it accepts. Never
    /// on an event loop (the loops empty the queue).
    func waitForRoom(unless stopping: () -> Bool) {
        while !self.room.lock(whenValue: true, timeoutSeconds: 0.1) {
            if stopping() { return }
        }
        self.room.unlock()
    }

    /// Whether some loop has room; under `room`'s lock.
    private var hasRoom: Bool { self.waiting.contains { $0 < Self.limitPerLoop } }

    /// `count` set-ups were taken off the queue of `inbox`.
    private func taken(_ count: Int, from inbox: Inbox) {
        guard count > 0 else { return }
        self.room.lock()
        self.waiting[inbox.index] -= count
        self.room.unlock(withValue: self.hasRoom)
    }
}

