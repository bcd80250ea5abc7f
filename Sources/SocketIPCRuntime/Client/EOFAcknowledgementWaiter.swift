#if os(Linux)
import CSocketIPCLinux
import Foundation
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
        var exchange: EOFExchange
        let continuation: CheckedContinuation<EOFExchange.Outcome, Never>
    }

    private let epollDescriptor: Int32
    private let waiting = Mutex<[Int32: Waiting]>([:])

    private init() {
        self.epollDescriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        if self.epollDescriptor >= 0 {
            let thread = Thread { [unowned self] in self.run() }
            thread.name = "SocketIPC-eof-ack"
            thread.start()
        }
    }

    /// Finishes `exchange`, whose message is sent and whose write side is shut down, once its acknowledgement
    /// and EOF have arrived.
    /// - Returns: `.finished` or `.failed` (the socket is then closed), or `nil` when the waiter is unavailable
    ///   (no `epoll` set could be made) and the caller must wait some other way.
    func acknowledgement(of exchange: EOFExchange) async -> EOFExchange.Outcome? {
        guard self.epollDescriptor >= 0 else { return nil }
        let descriptor = exchange.descriptor
        return await withCheckedContinuation { continuation in
            self.waiting.withLock { $0[descriptor] = Waiting(exchange: exchange, continuation: continuation) }
            if !self.arm(descriptor, operation: EPOLL_CTL_ADD) {
                let code = errno
                let waiting = self.waiting.withLock { $0.removeValue(forKey: descriptor) }
                let exchange = waiting!.exchange
                continuation.resume(returning: exchange.fail(
                    SocketIPCError.systemCall("epoll_ctl", errno: code)
                ))
            }
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

    /// Reads what arrived on `descriptor`; resumes its caller when the exchange is over, or waits again.
    private func continueExchange(on descriptor: Int32) {
        guard var waiting = self.waiting.withLock({ $0.removeValue(forKey: descriptor) }) else { return }
        let outcome = waiting.exchange.runWithoutBlocking(waitingForAcknowledgementUpTo: 0)
        if case .wouldBlock = outcome {
            self.waiting.withLock { $0[descriptor] = waiting }
            if !self.arm(descriptor, operation: EPOLL_CTL_MOD) {
                let code = errno
                guard let waiting = self.waiting.withLock({ $0.removeValue(forKey: descriptor) }) else { return }
                waiting.continuation.resume(returning: waiting.exchange.fail(
                    SocketIPCError.systemCall("epoll_ctl", errno: code)
                ))
            }
            return
        }
        waiting.continuation.resume(returning: outcome)
    }
}
#endif
