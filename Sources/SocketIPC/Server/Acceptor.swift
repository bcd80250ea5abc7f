import Foundation
import Logging
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
    private let onError: @Sendable (SocketIPCError) -> Void
    private let stopping = Atomic<Bool>(false)
    private let finished: EventLoopPromise<Void>
    private let logger: Logger
    /// Wakes the accepting thread from a back-off wait when the acceptor stops.
    private let wakeUp = NSCondition()

    /// The shortest and longest wait after `accept` failed for lack of descriptors or memory.
    static let backoffRange: ClosedRange<Duration> = .milliseconds(1) ... .seconds(1)
    /// How often a failure that goes on is summarised in the log.
    static let summaryInterval: Duration = .seconds(10)

    /// - Parameters:
    ///   - descriptor: A bound, listening socket; the acceptor closes it when it stops.
    ///   - eventLoop: Where ``finished`` completes.
    ///   - onAccept: Called on the accepting thread with each new non-blocking socket, which it then owns.
    ///   - logger: Where running out of descriptors (or memory) is reported: once when it starts, then every
    ///     ``summaryInterval`` while it lasts, then once more with a count when accepting works again.
    ///   - onError: Called for an error that ends accepting.
    init(
        descriptor: Int32,
        eventLoop: any EventLoop,
        logger: Logger,
        onAccept: @escaping @Sendable (Int32) -> Void,
        onError: @escaping @Sendable (SocketIPCError) -> Void
    ) {
        self.descriptor = descriptor
        self.logger = logger
        self.finished = eventLoop.makePromise(of: Void.self)
        self.onAccept = onAccept
        self.onError = onError
    }

    /// Completes when the accepting thread has ended and the listening socket is closed.
    var finishedFuture: EventLoopFuture<Void> { self.finished.futureResult }

    func start() {
        let thread = Thread { self.acceptUntilStopped() }
        thread.name = "SocketIPC-accept"
        thread.start()
    }

    /// Stops accepting: wakes the blocked `accept` and lets the thread end. Safe to call more than once.
    func stop() {
        guard !self.stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(self.descriptor, Int32(SHUT_RDWR))
        self.wakeUp.lock()
        self.wakeUp.broadcast()
        self.wakeUp.unlock()
    }

    private func acceptUntilStopped() {
        defer {
            close(self.descriptor)
            self.finished.succeed()
        }
        var exhaustion: Exhaustion?
        while !self.stopping.load(ordering: .acquiring) {
            let accepted = Self.acceptNonBlocking(self.descriptor)
            if accepted >= 0 {
                if let ended = exhaustion.take() { ended.logRecovery(to: self.logger) }
                if self.stopping.load(ordering: .acquiring) {
                    close(accepted)
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
                // exponentially instead of spinning on the error, and log the episode, not every failure.
                if exhaustion == nil {
                    exhaustion = Exhaustion(errno: code)
                    self.logger.error(
                        "accepting connections failed; backing off until descriptors or memory are free",
                        metadata: ["error": "\(SocketIPCError.systemCall("accept", errno: code))"]
                    )
                }
                let delay = exhaustion!.failed(logTo: self.logger)
                self.wait(delay)
            default:
                if !self.stopping.load(ordering: .acquiring) {
                    self.onError(SocketIPCError.systemCall("accept", errno: code))
                }
                return
            }
        }
    }

    /// Waits `delay`, or less if the acceptor stops meanwhile.
    private func wait(_ delay: Duration) {
        let (seconds, attoseconds) = delay.components
        let deadline = Date(timeIntervalSinceNow: Double(seconds) + Double(attoseconds) / 1e18)
        self.wakeUp.lock()
        while !self.stopping.load(ordering: .acquiring), self.wakeUp.wait(until: deadline) {}
        self.wakeUp.unlock()
    }

    /// One episode of `accept` failing for lack of resources: its failures, and the next back-off.
    private struct Exhaustion {
        let errno: Int32
        let started = ContinuousClock.now
        var failures = 0
        var backoff = Acceptor.backoffRange.lowerBound
        var lastSummary = ContinuousClock.now
        var failuresAtLastSummary = 0

        init(errno: Int32) { self.errno = errno }

        /// Counts a failure; returns how long to wait before the next `accept`.
        mutating func failed(logTo logger: Logger) -> Duration {
            self.failures += 1
            let now = ContinuousClock.now
            if now - self.lastSummary >= Acceptor.summaryInterval {
                logger.error(
                    "accepting connections still fails",
                    metadata: [
                        "error": "\(errnoDescription(self.errno))",
                        "failures": "\(self.failures - self.failuresAtLastSummary)",
                        "since": "\(now - self.lastSummary)",
                    ]
                )
                self.lastSummary = now
                self.failuresAtLastSummary = self.failures
            }
            defer { self.backoff = min(self.backoff * 2, Acceptor.backoffRange.upperBound) }
            return self.backoff
        }

        func logRecovery(to logger: Logger) {
            logger.notice(
                "accepting connections again",
                metadata: [
                    "error": "\(errnoDescription(self.errno))",
                    "failures": "\(self.failures)",
                    "duration": "\(ContinuousClock.now - self.started)",
                ]
            )
        }
    }

    private static func acceptNonBlocking(_ descriptor: Int32) -> Int32 {
        let accepted = accept(descriptor, nil, nil)
        if accepted >= 0 {
            _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
            _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK)
            SocketSend.preventSignal(on: accepted)
        }
        return accepted
    }
}
