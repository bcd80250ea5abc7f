import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Keeps an event loop polling its sockets instead of sleeping for a while after traffic, so that the next message
/// is picked up without the thread wake-up (tens of microseconds on a virtual machine) that dominates round-trip
/// latency.
///
/// Once armed, a task on the event loop calls `poll(2)` with a zero timeout on the sockets of the connections that
/// asked for it, until one is readable or the window ends; then it returns and the event loop handles the bytes at
/// once, without having slept. Other work of the event loop waits while the task polls, at most one window. It costs
/// up to one core per event loop for ``ConnectionOptions/busyPollDuration`` after each read or write. One poller
/// serves each event loop.
final class EventLoopBusyPoller: @unchecked Sendable {
    private let eventLoop: any EventLoop
    // Touched only on the event loop.
    private var descriptors: [pollfd] = []
    private var deadline: UInt64 = 0
    private var scheduled = false

    private init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let pollers = PerEventLoop { EventLoopBusyPoller($0) }

    /// The one of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopBusyPoller {
        self.pollers(eventLoop)
    }


    /// Polls `descriptor` too. Call on the event loop.
    func add(_ descriptor: Int32) {
        self.descriptors.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0))
    }

    /// Stops polling `descriptor`. Call on the event loop, before the descriptor is closed.
    func remove(_ descriptor: Int32) {
        self.descriptors.removeAll { $0.fd == descriptor }
    }

    /// Keeps polling for `nanoseconds` from now. Call on the event loop.
    @inline(__always)
    func arm(for nanoseconds: UInt64) {
        self.deadline = NIODeadline.now().uptimeNanoseconds &+ nanoseconds
        if !self.scheduled {
            self.scheduled = true
            self.eventLoop.execute { self.poll() }
        }
    }

    private func poll() {
        self.scheduled = false
        guard !self.descriptors.isEmpty else { return }
        let count = nfds_t(self.descriptors.count)
        while NIODeadline.now().uptimeNanoseconds < self.deadline {
            let ready = self.descriptors.withUnsafeMutableBufferPointer { systemPoll($0.baseAddress, count, 0) }
            if ready != 0 { return }
        }
    }
}
