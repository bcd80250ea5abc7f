import Foundation
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

    /// - Parameters:
    ///   - descriptor: A bound, listening socket; the acceptor closes it when it stops.
    ///   - eventLoop: Where ``finished`` completes.
    ///   - onAccept: Called on the accepting thread with each new non-blocking socket, which it then owns.
    ///   - onError: Called for an error that is not the end of accepting (for example, out of descriptors).
    init(
        descriptor: Int32,
        eventLoop: any EventLoop,
        onAccept: @escaping @Sendable (Int32) -> Void,
        onError: @escaping @Sendable (SocketIPCError) -> Void
    ) {
        self.descriptor = descriptor
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
    }

    private func acceptUntilStopped() {
        defer {
            close(self.descriptor)
            self.finished.succeed()
        }
        while !self.stopping.load(ordering: .acquiring) {
            let accepted = Self.acceptNonBlocking(self.descriptor)
            if accepted >= 0 {
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
                // Out of descriptors or memory: report it, and back off instead of spinning on the error.
                self.onError(SocketIPCError.systemCall("accept", errno: code))
                usleep(10_000)
            default:
                if !self.stopping.load(ordering: .acquiring) {
                    self.onError(SocketIPCError.systemCall("accept", errno: code))
                }
                return
            }
        }
    }

    private static func acceptNonBlocking(_ descriptor: Int32) -> Int32 {
        let accepted = accept(descriptor, nil, nil)
        if accepted >= 0 {
            _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
            _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) | O_NONBLOCK)
        }
        return accepted
    }
}
