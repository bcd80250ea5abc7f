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
/// accepts nothing more while every loop has ``limitPerLoop`` waiting (the kernel's listen backlog holds the rest,
/// and connecting peers wait there, as they do for any server that is busy). As NIO's own `ServerSocketChannel`
/// accepts at most `maxMessagesPerRead` connections per I/O turn.
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

        /// Makes the pipe (a socket pair, so that a write to it never raises `SIGPIPE`, which SwiftNIO ignores only
        /// once it has made a socket of its own) and registers its read end with the loop.
        func start() {
            var ends: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0, &ends) == 0 else { return }
            for end in ends {
                _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
                SocketSend.preventSignal(on: end)
            }
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
            self.queue.taken(turn.count, from: self)
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
            self.queue.taken(all.count, from: self)
            for setup in all { setup(self.eventLoop) }
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
        self.inboxes = loops.map { Inbox(eventLoop: $0, queue: self) }
        self.waiting = Array(repeating: 0, count: self.inboxes.count)
        for inbox in self.inboxes { inbox.start() }
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
        guard count > 0, let index = self.inboxes.firstIndex(where: { $0 === inbox }) else { return }
        self.room.lock()
        self.waiting[index] -= count
        self.room.unlock(withValue: self.hasRoom)
    }
}

/// Writes one byte to the pipe `descriptor`, which wakes the loop that watches its other end.
private func writeWakeUpByte(_ descriptor: Int32) {
    var byte: UInt8 = 1
    _ = SocketSend.send(descriptor, &byte, 1)
}
