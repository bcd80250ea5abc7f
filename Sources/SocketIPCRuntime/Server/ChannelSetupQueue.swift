import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Hands the sockets that the accepting thread accepted to the event loops, a few per loop at a time, in the loops'
/// I/O turns, and holds the accepting thread back while too many wait.
///
/// A task submitted to a SwiftNIO event loop runs before the loop looks at its sockets again: the loop runs tasks
/// until none is left, then polls. A thread that accepts connections as fast as peers make them, and submits each
/// one's set-up as a task, so keeps the loops from their sockets for as long as the peers go on (a review: one user
/// that connected and closed in a loop held every connection already open for the whole attack, 11–14 s, and new
/// peers' hellos unread until their handshake timeout). So each loop takes its set-ups when a pipe of its own is
/// readable, as one more socket among its others: at most ``setupsPerTurn`` per turn, and the accepting thread
/// accepts nothing more while ``limit`` wait in all (the kernel's listen backlog holds the rest, and connecting
/// peers wait there, as they do for any server that is busy). As NIO's own `ServerSocketChannel` accepts at most
/// `maxMessagesPerRead` connections per I/O turn.
final class ChannelSetupQueue: @unchecked Sendable {
    /// Sets up one accepted connection on the event loop it is given.
    typealias Setup = @Sendable (any EventLoop) -> Void

    /// The queue of the process-wide event loops (`MultiThreadedEventLoopGroup.singleton`).
    static let shared = ChannelSetupQueue(group: MultiThreadedEventLoopGroup.singleton)

    /// The most set-ups one loop runs in one I/O turn: 16.
    static let setupsPerTurn = 16

    /// The set-ups of one event loop, and how its loop is woken for them.
    private final class Inbox: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer

        let eventLoop: any EventLoop
        /// The set-ups waiting, and whether a wake-up is on its way (a byte in the pipe, or a task).
        let pending = Mutex<(setups: CircularBuffer<Setup>, woken: Bool)>((CircularBuffer(), false))
        /// The pipe's write end, whose read end the loop watches; `nil` when it could not be made or registered:
        /// then set-ups are submitted as tasks, as before.
        let wakeWrite = Mutex<Int32?>(nil)
        unowned let queue: ChannelSetupQueue

        init(eventLoop: any EventLoop, queue: ChannelSetupQueue) {
            self.eventLoop = eventLoop
            self.queue = queue
        }

        /// Makes the pipe and registers its read end with the loop.
        func start() {
            var ends: [Int32] = [-1, -1]
            guard makeCloseOnExecPipe(&ends) == 0 else { return }
            for end in ends { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
            self.wakeWrite.withLock { $0 = ends[1] }
            NIOPipeBootstrap(group: self.eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(self) }
                }
                .takingOwnershipOfDescriptor(input: ends[0])
                .whenFailure { _ in self.pipeFailed() }
        }

        /// The pipe cannot wake the loop (not registered, or its channel closed): tasks from now on, and what was
        /// queued meanwhile is run at once.
        private func pipeFailed() {
            self.wakeWrite.withLock { descriptor in
                if let write = descriptor.take() { close(write) }
            }
            self.eventLoop.execute { self.runAll() }
        }

        /// Wakes the loop for its set-ups: a byte in the pipe, or a task.
        func wake() {
            // Under the lock, so that the descriptor is not closed (and its number reused) meanwhile. A full pipe
            // (EAGAIN) already wakes the loop.
            let written = self.wakeWrite.withLock { descriptor -> Bool in
                guard let descriptor else { return false }
                writeWakeUpByte(descriptor)
                return true
            }
            if !written { self.eventLoop.execute { self.runAll() } }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // The bytes only wake the loop; the pipe's reads drain them.
        }

        func channelInactive(context: ChannelHandlerContext) {
            // Nothing closes the pipe but a fault elsewhere (a descriptor closed twice): set-ups must not wait for it.
            self.pipeFailed()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            self.runTurn()
        }

        /// Runs up to ``setupsPerTurn`` set-ups, and wakes the loop again if more wait: the next ones run in the
        /// loop's next I/O turn, after its sockets. On the loop.
        private func runTurn() {
            let (turn, more) = self.pending.withLock { pending in
                var turn: [Setup] = []
                while turn.count < ChannelSetupQueue.setupsPerTurn, let setup = pending.setups.popFirst() {
                    turn.append(setup)
                }
                pending.woken = !pending.setups.isEmpty
                return (turn, pending.woken)
            }
            self.queue.taken(turn.count)
            for setup in turn { setup(self.eventLoop) }
            if more { self.wake() }
        }

        /// Runs every set-up waiting, where no pipe wakes the loop. On the loop.
        private func runAll() {
            let all = self.pending.withLock { pending in
                pending.woken = false
                defer { pending.setups.removeAll() }
                return Array(pending.setups)
            }
            self.queue.taken(all.count)
            for setup in all { setup(self.eventLoop) }
        }
    }

    /// One per event loop; set once, in `init`.
    private var inboxes: [Inbox] = []
    private let next = Atomic<Int>(0)
    /// The most set-ups waiting in all before the accepting thread waits: 64 per loop.
    let limit: Int
    /// Whether fewer than ``limit`` set-ups wait; with ``waiting``, under its lock.
    private let room = ConditionLock(value: true)
    /// The set-ups waiting in all; under `room`'s lock.
    private var waiting = 0

    init(group: MultiThreadedEventLoopGroup) {
        var loops: [any EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        self.limit = 64 * max(1, loops.count)
        self.inboxes = loops.map { Inbox(eventLoop: $0, queue: self) }
        for inbox in self.inboxes { inbox.start() }
    }

    /// Queues `setup` for the next event loop in turn; from any thread, never waits.
    func enqueue(_ setup: @escaping Setup) {
        self.room.lock()
        self.waiting += 1
        self.room.unlock(withValue: self.waiting < self.limit)
        let inbox = self.inboxes[self.next.wrappingAdd(1, ordering: .relaxed).oldValue % self.inboxes.count]
        let wake = inbox.pending.withLock { pending in
            pending.setups.append(setup)
            if pending.woken { return false }
            pending.woken = true
            return true
        }
        if wake { inbox.wake() }
    }

    /// Returns once fewer than ``limit`` set-ups wait, or once `stopping` says the caller stops (looked at every
    /// 100 ms while the queue is full): the accepting thread calls it before it accepts. Never on an event loop (the
    /// loops empty the queue).
    func waitForRoom(unless stopping: () -> Bool) {
        while !self.room.lock(whenValue: true, timeoutSeconds: 0.1) {
            if stopping() { return }
        }
        self.room.unlock()
    }

    /// `count` set-ups were taken off the queue.
    private func taken(_ count: Int) {
        guard count > 0 else { return }
        self.room.lock()
        self.waiting -= count
        self.room.unlock(withValue: self.waiting < self.limit)
    }
}

/// Writes one byte to the pipe `descriptor`, which wakes the loop that watches its read end.
private func writeWakeUpByte(_ descriptor: Int32) {
    var byte: UInt8 = 1
    _ = write(descriptor, &byte, 1)
}
