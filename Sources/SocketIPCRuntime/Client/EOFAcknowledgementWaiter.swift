#if os(Linux)
import CSocketIPCLinux
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Waits for the acknowledgements of EOF-style exchanges that have sent their whole message, for every caller of
/// the process, on one thread with one `epoll` set.
///
/// Once a message is written and the write side shut down, all that is left is to read a few bytes until EOF; a
/// NIO channel for that (set up, registered, torn down per connection) costs more than the exchange itself. Here a
/// waiting exchange costs one `epoll_ctl`, and the thread reads and closes each socket as it becomes readable, then
/// resumes its caller. The thread starts with the first wait and sleeps in `epoll_wait` whenever nothing is ready.
final class EOFAcknowledgementWaiter: @unchecked Sendable {
    /// The waiter of the process.
    static let shared = EOFAcknowledgementWaiter()

    private struct Waiting {
        /// Tells this wait from a later one on a socket that reuses the number.
        let id: UInt64
        var exchange: EOFExchange
        let continuation: CheckedContinuation<EOFExchange.Outcome, Never>
    }

    private struct State {
        /// The waits whose sockets are in the epoll set, by socket.
        var waiting: [Int32: Waiting] = [:]
        /// The waits the thread took out of `waiting` to read from their sockets, with the error to fail them with
        /// if their callers gave up meanwhile (`nil`: not abandoned).
        var running: [UInt64: SocketIPCError?] = [:]
        var nextID: UInt64 = 0
    }

    private var epollDescriptor: Int32
    private let state = Mutex(State())

    private init() {
        self.epollDescriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        if self.epollDescriptor >= 0 {
            do {
                try DetachedThread.start(name: "sipc-eof-ack", stackSize: 256 * 1024) { [unowned self] in self.run() }
            } catch {
                // No thread to be had: the waiter stays unavailable and callers wait on an event loop instead.
                close(self.epollDescriptor)
                self.epollDescriptor = -1
            }
        }
    }

    /// Finishes `exchange`, whose message is sent and whose write side is shut down, once its acknowledgement
    /// and EOF have arrived, `timeout` has passed, or the calling task is cancelled.
    /// - Parameters:
    ///   - exchange: The exchange; the waiter owns its socket from here on and closes it when done.
    ///   - timeout: How long to wait at most; `nil` for no limit.
    ///   - timedOut: The error of a wait that `timeout` ended.
    /// - Returns: `.finished` or `.failed` (the socket is then closed; `timedOut` after `timeout`, `cancelled`
    ///   when the task was cancelled), or `nil` when the waiter is unavailable (no `epoll` set could be made) and the
    ///   caller must wait some other way.
    func acknowledgement(
        of exchange: EOFExchange,
        timeout: Duration?,
        timedOut: @autoclosure @escaping @Sendable () -> SocketIPCError
    ) async -> EOFExchange.Outcome? {
        guard self.epollDescriptor >= 0 else { return nil }
        let descriptor = exchange.descriptor
        let path = exchange.path
        let id = self.state.withLock { state in
            state.nextID &+= 1
            return state.nextID
        }
        let timer = NIOLockedValueBox<Scheduled<Void>?>(nil)
        defer { timer.withLockedValue { $0?.cancel() } }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let failure: (Int32, CheckedContinuation<EOFExchange.Outcome, Never>)? = self.state.withLock { state in
                    state.waiting[descriptor] = Waiting(id: id, exchange: exchange, continuation: continuation)
                    // Armed under the lock, so that `abandon` never sees a wait whose socket is not registered yet.
                    guard self.arm(descriptor, operation: EPOLL_CTL_ADD) else {
                        let code = errno
                        state.waiting[descriptor] = nil
                        return (code, continuation)
                    }
                    return nil
                }
                if let (code, continuation) = failure {
                    continuation.resume(returning: exchange.fail(SocketIPCError.systemCall("epoll_ctl", errno: code)))
                    return
                }
                // Timed only once registered: a timer that fired before would find no wait to end, and the wait that
                // followed would have no limit at all.
                if let timeout {
                    let scheduled = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: TimeAmount(timeout)) {
                        self.abandon(descriptor, id: id, because: timedOut())
                    }
                    timer.withLockedValue { $0 = scheduled }
                }
                if Task.isCancelled {
                    self.abandon(descriptor, id: id, because: Self.cancelled(path: path))
                }
            }
        } onCancel: {
            self.abandon(descriptor, id: id, because: Self.cancelled(path: path))
        }
    }

    private static func cancelled(path: String) -> SocketIPCError {
        SocketIPCError(.cancelled, "the task waiting for the acknowledgement was cancelled", path: path)
    }

    /// Gives up the wait `id` on `descriptor`: fails it with `error` (closing its socket) unless it has ended.
    private func abandon(_ descriptor: Int32, id: UInt64, because error: SocketIPCError) {
        let abandoned: Waiting? = self.state.withLock { state in
            if state.running[id] != nil {
                // The thread is reading from the socket: it fails the exchange when it is done, unless it finished.
                if state.running[id]! == nil { state.running[id] = error }
                return nil
            }
            guard let waiting = state.waiting[descriptor], waiting.id == id else { return nil }
            // Out of the set before the socket is closed (and its number reused).
            _ = epoll_ctl(self.epollDescriptor, EPOLL_CTL_DEL, descriptor, nil)
            state.waiting[descriptor] = nil
            return waiting
        }
        if let abandoned {
            abandoned.continuation.resume(returning: abandoned.exchange.fail(error))
        }
    }

    /// Asks for one readiness event of `descriptor` (`EPOLLONESHOT`: it is disarmed when reported).
    private func arm(_ descriptor: Int32, operation: Int32) -> Bool {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLONESHOT.rawValue
        event.data.fd = descriptor
        return epoll_ctl(self.epollDescriptor, operation, descriptor, &event) == 0
    }

    private func run() {
        let capacity = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while true {
            let count = epoll_wait(self.epollDescriptor, events, Int32(capacity), -1)
            guard count > 0 else { continue }  // EINTR
            for index in 0..<Int(count) {
                self.continueExchange(on: events[index].data.fd)
            }
        }
    }

    /// Reads what arrived on `descriptor`; resumes its caller when the exchange is over or was abandoned, or waits
    /// again.
    private func continueExchange(on descriptor: Int32) {
        guard var waiting: Waiting = self.state.withLock({ state in
            guard let waiting = state.waiting.removeValue(forKey: descriptor) else { return nil }
            state.running[waiting.id] = .some(nil)
            return waiting
        }) else { return }
        let outcome = waiting.exchange.runWithoutBlocking(waitingForAcknowledgementUpTo: 0)
        // A finished or failed exchange closed its socket (which left the epoll set with it); one that would block
        // still owns it, so no other wait can have its number.
        let resumed: EOFExchange.Outcome? = self.state.withLock { state in
            let abandoned = state.running.removeValue(forKey: waiting.id) ?? nil
            guard case .wouldBlock = outcome else { return outcome }
            if let abandoned {
                _ = epoll_ctl(self.epollDescriptor, EPOLL_CTL_DEL, descriptor, nil)
                return waiting.exchange.fail(abandoned)
            }
            // Armed again under the lock, for the same reason as in `acknowledgement(of:timeout:)`.
            guard self.arm(descriptor, operation: EPOLL_CTL_MOD) else {
                let code = errno
                _ = epoll_ctl(self.epollDescriptor, EPOLL_CTL_DEL, descriptor, nil)
                return waiting.exchange.fail(SocketIPCError.systemCall("epoll_ctl", errno: code))
            }
            state.waiting[descriptor] = waiting
            return nil
        }
        if let resumed {
            waiting.continuation.resume(returning: resumed)
        }
    }
}
#endif
