import CSocketIPCLinux
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Accepts connections on a thread of its own with blocking `accept(2)`, and hands each new socket to the server,
/// which wraps it in a NIO channel. Owning the accepted descriptors lets the server refuse a connection before it
/// costs a channel, and lets the latency mode poll the sockets.
final class Acceptor: @unchecked Sendable {
    private let descriptor: Int32
    private let onAccept: @Sendable (Int32) -> Void
    private let waitForRoom: @Sendable (_ stopping: () -> Bool) -> Void
    private let onError: @Sendable (SocketIPCError) -> Void
    private let stopping = Atomic<Bool>(false)
    private let finished: EventLoopPromise<Void>
    private let logger: Logger
    /// Wakes the accepting thread from a back-off wait when the acceptor stops: its value is whether it stops.
    private let wakeUp = ConditionLock(value: false)
    /// For a listening socket shared with another process: a pipe whose write end ``stop()`` writes to, waking the
    /// thread from its `poll(2)`; `nil` for a socket of our own, which ``stop()`` shuts down instead.
    private let wakePipe: (read: Int32, write: Int32)?
    /// Why the wake-up pipe of a shared socket could not be made (`pipe2(2)`'s errno): ``start()`` then fails, since
    /// stopping without the pipe would shut down the socket for every holder.
    private let wakePipeErrno: Int32?

    /// - Parameters:
    ///   - descriptor: A bound, listening socket; the acceptor closes it when it stops.
    ///   - sharesListeningSocket: Whether another process holds the socket too (socket activation): stopping must
    ///     then not shut it down (`shutdown(2)` acts on the socket, not on this process's descriptor), so the thread
    ///     waits in `poll(2)` on the socket and a wake-up pipe instead of blocking in `accept(2)`.
    ///   - eventLoop: Where ``finished`` completes.
    ///   - onAccept: Called on the accepting thread with each new non-blocking socket, which it then owns.
    ///   - waitForRoom: Called on the accepting thread before each `accept(2)`: returns once the server can take
    ///     another connection (``ChannelSetupQueue/waitForRoom(unless:)``), or once the closure it is given says the
    ///     acceptor stops, so that connections wait in the kernel's backlog, not in the event loops' task queues.
    ///   - logger: Where running out of descriptors (or memory) is reported, at most once per
    ///     ``AcceptBackoff/reportInterval`` for failing and once for recovering, with counts.
    ///   - onError: Called for an error that ends accepting.
    init(
        descriptor: Int32,
        sharesListeningSocket: Bool = false,
        eventLoop: any EventLoop,
        logger: Logger,
        onAccept: @escaping @Sendable (Int32) -> Void,
        waitForRoom: @escaping @Sendable (_ stopping: () -> Bool) -> Void = { _ in },
        onError: @escaping @Sendable (SocketIPCError) -> Void
    ) {
        self.descriptor = descriptor
        self.logger = logger
        self.finished = eventLoop.makePromise(of: Void.self)
        self.onAccept = onAccept
        self.waitForRoom = waitForRoom
        self.onError = onError
        var ends: [Int32] = [-1, -1]
        if sharesListeningSocket, makeCloseOnExecPipe(&ends) == 0 {
            self.wakePipe = (ends[0], ends[1])
            self.wakePipeErrno = nil
            // Another holder (a second server on the same activated socket) may take a connection between this
            // thread's poll(2) and its accept(2), which on a blocking socket (systemd passes them blocking) would then
            // wait for the next connection, and stop() could not end it. Non-blocking, that accept fails with EAGAIN
            // and the thread polls again. The flag belongs to the open file description, so the other holders see it
            // too, as Go's net.FileListener and SwiftNIO's inherited channels set it. (Only with the pipe: without
            // it, accept(2) is the thread's wait.)
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        } else {
            self.wakePipeErrno = sharesListeningSocket ? errno : nil
            self.wakePipe = nil
        }
    }

    /// Completes when the accepting thread has ended and the listening socket is closed (a shared one: handed to a
    /// closing thread, which closes it at once unless the release of its backlog waits).
    var finishedFuture: EventLoopFuture<Void> { self.finished.futureResult }

    /// Starts the accepting thread. Should no thread be had (`pthread_create` failing with `EAGAIN`), or no wake-up
    /// pipe for a shared socket, the acceptor ends at once as after a failed `accept`: the listening socket is closed
    /// and `onError` called.
    func start() {
        if let code = self.wakePipeErrno {
            self.stopping.store(true, ordering: .releasing)
            self.onError(SocketIPCError.systemCall("pipe2", errno: code))
            self.acceptUntilStopped()
            return
        }
        do {
            try DetachedThread.start(name: "sipc-accept") { self.acceptUntilStopped() }
        } catch {
            self.stopping.store(true, ordering: .releasing)
            self.onError(error as? SocketIPCError ?? SocketIPCError(.systemCall, errorText(error), cause: error))
            self.acceptUntilStopped()
        }
    }

    /// Stops accepting: wakes the blocked `accept` and lets the thread end. Safe to call more than once.
    func stop() {
        guard !self.stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if let wakePipe = self.wakePipe {
            var byte: UInt8 = 1
            _ = write(wakePipe.write, &byte, 1)
        } else {
            shutdown(self.descriptor, Int32(SHUT_RDWR))
        }
        self.wakeUp.lock()
        self.wakeUp.unlock(withValue: true)
    }

    private func acceptUntilStopped() {
        defer {
            if self.wakePipe != nil {
                // A shared (activated) socket of which this may be the last holder: its close then drops the
                // connections still in its backlog, with whatever their peers passed before the server turned
                // passing off, and the last close of a lingering socket among them would hold this thread, which
                // `Server.run()` waits for, for the linger time the peer chose (a review: SIGTERM took 50 s with a
                // grace period of 10). Closed on a closing thread instead, as passed descriptors are.
                PassedDescriptorCloser.close([self.descriptor], passedBy: PassedDescriptorCloser.ownSockets)
            } else {
                close(self.descriptor)
            }
            if let wakePipe = self.wakePipe {
                close(wakePipe.read)
                close(wakePipe.write)
            }
            self.finished.succeed()
        }
        var backoff = AcceptBackoff()
        while !self.stopping.load(ordering: .acquiring) {
            self.waitForRoom { self.stopping.load(ordering: .acquiring) }
            if let wakePipe = self.wakePipe {
                switch Self.waitUntilReadable(self.descriptor, orWokenBy: wakePipe.read) {
                case .readable: break
                case .wokenUp: return
                case .failed(let code) where code == ENOMEM || code == EAGAIN:
                    // poll(2) could not allocate its tables: back off as for accept's ENOMEM, then wait again.
                    let (wait, report) = backoff.failed(errno: code)
                    if let report { self.log(report, call: "poll") }
                    self.wait(wait)
                    continue
                case .failed(let code):
                    if !self.stopping.load(ordering: .acquiring) {
                        self.onError(SocketIPCError.systemCall("poll", errno: code))
                    }
                    return
                case .hungUp:
                    // Shut down by another holder: a non-blocking accept would fail with EAGAIN for ever (a blocking
                    // one fails with EINVAL), so this is accept's end.
                    if !self.stopping.load(ordering: .acquiring) {
                        self.onError(SocketIPCError.systemCall("accept", errno: EINVAL))
                    }
                    return
                }
            }
            let accepted = Self.acceptNonBlocking(self.descriptor)
            if accepted >= 0 {
                if let report = backoff.succeeded() { self.log(report) }
                if self.stopping.load(ordering: .acquiring) {
                    Self.closeRefused(accepted, fromSharedSocket: self.wakePipe != nil)
                    return
                }
                self.onAccept(accepted)
                continue
            }
            let code = errno
            switch code {
            case EINTR, ECONNABORTED, EAGAIN, EPROTO:
                continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors or memory: the pending connections stay in the kernel's backlog. Back off
                // instead of spinning on the error, and log the episodes, not every failure.
                let (wait, report) = backoff.failed(errno: code)
                if let report { self.log(report) }
                self.wait(wait)
            default:
                if !self.stopping.load(ordering: .acquiring) {
                    self.onError(SocketIPCError.systemCall("accept", errno: code))
                }
                return
            }
        }
    }

    /// Closes a connection accepted as the acceptor stopped. One of a shared (activated) socket may hold descriptors
    /// its peer passed before the server turned passing off: it is shut down and closed on a closing thread charged
    /// to its peer's user, as ``QueuedDescriptors`` closes a refused one, not on this thread.
    private static func closeRefused(_ accepted: Int32, fromSharedSocket: Bool) {
        guard fromSharedSocket else {
            close(accepted)
            return
        }
        let user = PeerCredentials.read(descriptor: accepted)?.userID
        _ = shutdown(accepted, Int32(SHUT_RDWR))
        PassedDescriptorCloser.close([accepted], passedBy: user)
    }

    /// Logs a back-off episode's start, its continuation or its end; `call` names the system call that failed
    /// (`accept`, or the `poll` that waits for a shared socket).
    private func log(_ report: AcceptBackoff.Report, call: String = "accept") {
        switch report {
        case .failing(let code, let failures, let first):
            self.logger.error(
                first
                    ? "accepting connections failed; backing off until descriptors or memory are free"
                    : "accepting connections still fails",
                metadata: [
                    "error": "\(SocketIPCError.systemCall(call, errno: code))",
                    "failures": "\(failures)",
                ]
            )
        case .recovered(let failures):
            self.logger.notice("accepting connections again", metadata: ["failures": "\(failures)"])
        }
    }

    /// Waits `delay`, or less if the acceptor stops meanwhile.
    private func wait(_ delay: Duration) {
        let (seconds, attoseconds) = delay.components
        if self.wakeUp.lock(whenValue: true, timeoutSeconds: Double(seconds) + Double(attoseconds) / 1e18) {
            self.wakeUp.unlock()
        }
    }

    /// What ``waitUntilReadable(_:orWokenBy:)`` saw.
    private enum PollResult {
        /// A connection may be there to accept (another holder of the socket may take it first).
        case readable
        /// ``stop()`` wrote to the wake-up pipe.
        case wokenUp
        /// The listening socket was shut down (`POLLHUP`, or `POLLRDHUP` for its reading side) or failed (`POLLERR`,
        /// `POLLNVAL`).
        case hungUp
        /// `poll(2)` failed with this errno (not `EINTR`, which it retries).
        case failed(Int32)
    }

    /// Waits in `poll(2)` until `descriptor` has a connection to accept, `wakeUp` is written to, or the socket hangs up.
    private static func waitUntilReadable(_ descriptor: Int32, orWokenBy wakeUp: Int32) -> PollResult {
        // `shutdown(SHUT_RD)` by another holder makes the socket readable for ever without POLLHUP, and a non-blocking
        // accept then fails with EAGAIN each time: Linux says so with POLLRDHUP.
        #if os(Linux)
        let hangUp = Int16(POLLHUP | POLLERR | POLLNVAL) | csocketipc_pollrdhup
        let watched = Int16(POLLIN) | csocketipc_pollrdhup
        #else
        let hangUp = Int16(POLLHUP | POLLERR | POLLNVAL)
        let watched = Int16(POLLIN)
        #endif
        var events = [
            pollfd(fd: descriptor, events: watched, revents: 0),
            pollfd(fd: wakeUp, events: Int16(POLLIN), revents: 0),
        ]
        while true {
            let result = poll(&events, nfds_t(events.count), -1)
            if result < 0 {
                // Found by fault injection: a failed poll was taken for stop()'s wake-up, and the server went on
                // running without accepting anything, silently.
                let code = errno
                if code == EINTR { continue }
                return .failed(code)
            }
            if result == 0 { continue }
            if events[1].revents != 0 { return .wokenUp }
            if events[0].revents & hangUp != 0 { return .hungUp }
            return .readable
        }
    }

    private static func acceptNonBlocking(_ descriptor: Int32) -> Int32 {
        // Close-on-exec from the start (accept4 on Linux): a child that another thread spawns meanwhile must not
        // inherit the connection and keep it open after the server closed it. Non-blocking from the start too: one
        // system call per connection instead of four (W1 of the benchmarks is connections per second).
        #if canImport(Darwin)
        // Untested: SocketIPC's tests run on Linux.
        let accepted = accept(descriptor, nil, nil)
        if accepted >= 0 {
            _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
            _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK)
            SocketSend.preventSignal(on: accepted)
        }
        return accepted
        #else
        return csocketipc_accept_nonblocking_cloexec(descriptor)
        #endif
    }
}
