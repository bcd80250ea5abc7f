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

/// Lets a task that runs on an event loop wait until the loop has polled its sockets once, so that a long run of
/// work on the loop (a sender that never has to wait) does not keep the loop's other connections from being served.
///
/// SwiftNIO runs every task queued on a loop, including those queued while it runs them, before it polls its
/// sockets again; so a task resumed by a timer or by another task may well run again before any poll, and a task that
/// yields that way can hold the loop for ever. A byte written to a socket pair whose read end the loop watches is seen only by
/// the loop's next poll: the waiters resumed on that read run after the loop has handled whatever else the same poll
/// found (a new connection's hello, another connection's call). One pair serves each event loop, made the first time
/// a task waits there; should it fail (no descriptors left), waiting returns at once.
///
/// The tasks that wait here share the loop's time between two polls: ``sharers`` says how many waited for the last
/// poll, so that each can make its run that much shorter (see ``EventLoopShare``), and the work between two polls
/// stays about one run whatever their number.
final class EventLoopTurn: @unchecked Sendable {
    private let eventLoop: any EventLoop
    /// How many tasks the last poll resumed, at least 1; read from any thread.
    private let resumedAtLastPoll = Atomic<Int>(1)
    /// The messages and bytes sent by long runs of work on this loop since its last poll (``spend(bytes:budget:)``).
    private let spentMessages = Atomic<Int>(0)
    private let spentBytes = Atomic<Int>(0)
    // Touched only on the event loop.
    private var waiters: [UnsafeContinuation<Void, Never>] = []
    /// The channel handlers' work that waits for the poll (``afterPoll(_:)``).
    private var callbacks: [() -> Void] = []
    private var writeEnd: Int32 = -1
    private var setUp = false
    private var signalled = false

    private init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let turns = PerEventLoop { EventLoopTurn($0) }

    /// The one of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopTurn {
        self.turns(eventLoop)
    }

    /// Suspends the calling task, which runs on the event loop, until the loop has polled its sockets.
    func wait() async {
        self.eventLoop.preconditionInEventLoop()
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            self.waiters.append(continuation)
            self.signal()
        }
    }

    /// Runs `body` on the event loop once the loop has polled its sockets: the rest of a read that a channel handler
    /// gives up the loop for (``ConnectionChannelHandler/frameBudget``). Where the loop has no pair (an
    /// `EmbeddedEventLoop`, or no descriptor left), `body` runs after the loop's other queued work instead.
    func afterPoll(_ body: @escaping () -> Void) {
        self.eventLoop.preconditionInEventLoop()
        self.callbacks.append(body)
        self.signal()
    }

    private func signal() {
        if !self.setUp {
            self.setUp = true
            self.makePair()
        }
        guard self.writeEnd >= 0 else {
            self.resumeWaiters()
            return
        }
        guard !self.signalled else { return }
        self.signalled = true
        var byte: UInt8 = 1
        // send(2) with MSG_NOSIGNAL: a write(2) to a pair whose read end closed would raise SIGPIPE if it came
        // before SwiftNIO made its first socket (which makes it ignore the signal).
        let written = SocketSend.send(self.writeEnd, &byte, 1)
        if written != 1 && errno != EAGAIN {
            // The pair is gone: nothing will wake the waiters, so they go on now (and later ones at once).
            self.pairFailed()
        }
    }

    /// The pair cannot signal any more (a write failed, or its read end closed): the waiters go on now, and later
    /// ones at once.
    fileprivate func pairFailed() {
        if self.writeEnd >= 0 {
            close(self.writeEnd)
            self.writeEnd = -1
        }
        self.signalled = false
        self.resumeWaiters()
    }

    /// The loop read the pair: its poll has happened.
    fileprivate func polled() {
        self.signalled = false
        self.resumedAtLastPoll.store(max(1, self.waiters.count), ordering: .relaxed)
        self.spentMessages.store(0, ordering: .relaxed)
        self.spentBytes.store(0, ordering: .relaxed)
        self.resumeWaiters(polled: true)
    }

    /// Counts one message of `bytes` sent on this loop since its last poll; returns whether all of them together
    /// have used up `budget` (messages, bytes), so that the sender gives the loop its turn now, however its own run
    /// began: however many senders a peer wakes at once (streams it feeds credit in drips, each below a run), the
    /// work between two polls stays about one run.
    func spend(bytes: Int, budget: (messages: Int, bytes: Int)) -> Bool {
        let messages = self.spentMessages.wrappingAdd(1, ordering: .relaxed).newValue
        let total = self.spentBytes.wrappingAdd(bytes, ordering: .relaxed).newValue
        return messages >= budget.messages || total >= budget.bytes
    }

    /// How many tasks waited for the loop's last poll, at least 1: the number that share its next turn.
    var sharers: Int { self.resumedAtLastPoll.load(ordering: .relaxed) }

    /// Resumes the tasks that wait and runs the callbacks: at once when the loop has polled, else (`polled` false:
    /// there is no pair to wait for) the callbacks after the loop's other queued work, never inside the call that
    /// queued them.
    private func resumeWaiters(polled: Bool = false) {
        let ready = self.waiters
        self.waiters = []
        for waiter in ready { waiter.resume() }
        guard !self.callbacks.isEmpty else { return }
        let callbacks = self.callbacks
        self.callbacks = []
        if polled {
            for callback in callbacks { callback() }
        } else {
            self.eventLoop.assumeIsolated().execute {
                for callback in callbacks { callback() }
            }
        }
    }

    private func makePair() {
        // Only loops that poll sockets have a poll to wait for (not an EmbeddedEventLoop).
        guard let bootstrap = NIOPipeBootstrap(validatingGroup: self.eventLoop) else { return }
        // A socket pair rather than a pipe, so that the write end can be written without SIGPIPE (``SocketSend``).
        var ends: [Int32] = [-1, -1]
        // Close-on-exec from the start: a child that `serve --exec` spawns meanwhile must not inherit it.
        guard socketpair(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0, &ends) == 0 else { return }
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)  // Darwin, which has no SOCK_CLOEXEC (untested)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            SocketSend.preventSignal(on: end)
        }
        let (readEnd, writeEnd) = (ends[0], ends[1])
        self.writeEnd = writeEnd
        let turn = self
        bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EventLoopTurnHandler(turn: turn))
                }
            }
            .takingOwnershipOfDescriptor(input: readEnd)
            .whenFailure { _ in
                // The read end is the bootstrap's now, which closes it; the write end is ours.
                close(writeEnd)
                turn.writeEnd = -1
                turn.resumeWaiters()
            }
    }
}

/// Reads the socket pair of an ``EventLoopTurn`` and tells it the loop has polled.
private final class EventLoopTurnHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let turn: EventLoopTurn

    init(turn: EventLoopTurn) {
        self.turn = turn
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.turn.polled()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.turn.pairFailed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.turn.pairFailed()
        context.close(promise: nil)
    }
}
