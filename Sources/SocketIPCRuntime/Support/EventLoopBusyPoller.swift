import NIOCore
import Synchronization

#if os(Linux)
import CSocketIPCLinux
#endif

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
/// Once armed, a task on the event loop polls the sockets of its connections with a zero timeout until one is
/// readable, or the window ends; then it returns and the event loop handles the bytes at once, without having slept.
/// Work that SocketIPC queues on the loop meanwhile (a flush, a task's job), which would wait behind the poll, ends
/// the poll at once, and the poll goes on after it until the same deadline. Other work queued on the loop (a timer,
/// an application's own task) waits while the task polls, at most one window. One poller serves each event loop.
///
/// Two kinds of window, per connection (``ConnectionOptions/busyPolling``):
/// - **fixed** (``BusyPolling/fixed(_:)``, the latency mode): polls for the whole duration after every read and
///   write.
/// - **adaptive** (``BusyPolling/adaptive(maximum:)``, the default): the window follows the traffic, as Linux's KVM
///   sizes its halt polling (``AdaptivePollWindow`` has the rule). A loop spins only while the peer's answers come
///   back within the maximum, and stops by itself when traffic stops: an idle connection costs no CPU.
///
/// At most half the processor cores poll at once in a process (none on a single core), as Go's scheduler bounds its
/// spinning threads: the rest sleep as usual, so polling never takes every core from the work it waits for.
final class EventLoopBusyPoller: @unchecked Sendable {
    private let eventLoop: any EventLoop
    // Touched only on the event loop.
    private var descriptors: [pollfd] = []
    #if os(Linux)
    /// An epoll set of the descriptors, so that a poll costs the same for 5,000 connections as for one.
    private var epollDescriptor: Int32 = -1
    #endif
    private var deadline: UInt64 = 0
    private var scheduled = false
    /// The adaptive window's size.
    private var adaptiveWindow = AdaptivePollWindow()
    /// Counts the work queued on the loop; a poll ends at once when it changes.
    private let handedOver = Atomic<UInt>(0)
    /// ``handedOver`` when the poll was scheduled: work queued before that is ahead of the poll in the loop's queue
    /// and has run; work queued after it waits behind the poll.
    private var handedOverBeforePoll: UInt = 0

    private init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let pollers = PerEventLoop { EventLoopBusyPoller($0) }

    /// How many event loops of the process poll right now, and how many may.
    private static let polling = Atomic<Int>(0)
    /// Half the cores: none on a single core, where a polling loop would take the CPU from the very work it waits for.
    private static let maximumPolling = System.coreCount / 2

    /// Whether loops of this process may poll at all (not on a single core).
    static var isAvailable: Bool { Self.maximumPolling > 0 }

    /// The one of `eventLoop`.
    static func shared(for eventLoop: any EventLoop) -> EventLoopBusyPoller {
        self.pollers(eventLoop)
    }

    /// Polls `descriptor` too. Call on the event loop.
    func add(_ descriptor: Int32) {
        #if os(Linux)
        if self.epollDescriptor < 0 { self.epollDescriptor = epoll_create1(Int32(EPOLL_CLOEXEC)) }
        if self.epollDescriptor >= 0 {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.fd = descriptor
            if epoll_ctl(self.epollDescriptor, EPOLL_CTL_ADD, descriptor, &event) == 0 {
                self.descriptors.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0))
            }
            return
        }
        #endif
        self.descriptors.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0))
    }

    /// Stops polling `descriptor`. Call on the event loop when its channel closes (the kernel has then already
    /// dropped a closed descriptor from the epoll set; a number reused since is added only later, on this loop).
    func remove(_ descriptor: Int32) {
        guard let index = self.descriptors.firstIndex(where: { $0.fd == descriptor }) else { return }
        self.descriptors.remove(at: index)
        #if os(Linux)
        if self.epollDescriptor >= 0 { _ = epoll_ctl(self.epollDescriptor, EPOLL_CTL_DEL, descriptor, nil) }
        #endif
    }

    /// Work was queued on the event loop (from its own thread or another): a poll in progress or scheduled before
    /// it ends at once, so that the work, which waits behind the poll, runs. From any thread.
    @inline(__always)
    func workQueued() {
        self.handedOver.wrappingAdd(1, ordering: .relaxed)
    }

    /// Keeps polling for `nanoseconds` from now: the latency mode. Call on the event loop after a read or write.
    @inline(__always)
    func arm(for nanoseconds: UInt64) {
        let (deadline, overflow) = NIODeadline.now().uptimeNanoseconds.addingReportingOverflow(nanoseconds)
        self.extend(to: overflow ? .max : deadline)
    }

    /// Polls for the adaptive window from now, if it is open; `maximum` bounds it. Call on the event loop after a
    /// read or write.
    @inline(__always)
    func armAdaptively(maximum: UInt64, wrote: Bool) {
        let now = NIODeadline.now().uptimeNanoseconds
        let window = self.adaptiveWindow.armed(at: now, maximum: maximum, wrote: wrote)
        if window > 0 { self.extend(to: now &+ window) }
    }

    /// Bytes arrived: sizes the adaptive window by how long after the last read or write they came. Call on the
    /// event loop at the start of a read.
    @inline(__always)
    func messageArrived() {
        self.adaptiveWindow.messageArrived(at: NIODeadline.now().uptimeNanoseconds)
    }

    private func extend(to deadline: UInt64) {
        if deadline > self.deadline { self.deadline = deadline }
        if !self.scheduled { self.schedulePoll() }
    }

    private func schedulePoll() {
        self.scheduled = true
        self.handedOverBeforePoll = self.handedOver.load(ordering: .relaxed)
        self.eventLoop.execute { self.poll() }
    }

    private func poll() {
        self.scheduled = false
        guard !self.descriptors.isEmpty else { return }
        guard Self.polling.wrappingAdd(1, ordering: .relaxed).newValue <= Self.maximumPolling else {
            Self.polling.wrappingSubtract(1, ordering: .relaxed)
            return
        }
        defer { Self.polling.wrappingSubtract(1, ordering: .relaxed) }
        // A poll that starts after its deadline (work ahead of it in the loop's queue took the window) polled in
        // vain only if it polled at all: it does not count as a miss.
        var polled = false
        while NIODeadline.now().uptimeNanoseconds < self.deadline {
            if self.handedOver.load(ordering: .relaxed) != self.handedOverBeforePoll {
                // Let the work run, then go on polling until the same deadline.
                self.schedulePoll()
                return
            }
            if self.pollOnce() { return }
            polled = true
        }
        if polled { self.adaptiveWindow.pollMissed() }
    }

    /// Whether a descriptor is readable now.
    @inline(__always)
    private func pollOnce() -> Bool {
        #if os(Linux)
        if self.epollDescriptor >= 0 {
            var event = epoll_event()
            return epoll_wait(self.epollDescriptor, &event, 1, 0) != 0
        }
        #endif
        let count = nfds_t(self.descriptors.count)
        return self.descriptors.withUnsafeMutableBufferPointer { systemPoll($0.baseAddress, count, 0) } != 0
    }
}
