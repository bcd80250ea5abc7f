/// Whether a connection's event loop polls for the next message for a while after each read and write instead of
/// going to sleep at once; see ``ConnectionOptions/busyPolling``.
///
/// Waking a sleeping thread costs tens of microseconds on a virtual machine, more than the rest of a small request's
/// round trip. Polling for a short while after traffic picks the next message up without that wake-up, at the price
/// of CPU while it polls.
public struct BusyPolling: Sendable, Hashable, CustomStringConvertible {
    enum Mode: Hashable {
        case off
        case adaptive(maximum: Duration)
        case fixed(Duration)
    }

    let mode: Mode

    /// Never polls: the event loop sleeps as soon as it has nothing to do.
    public static let off = BusyPolling(mode: .off)

    /// Polls only while it pays, for a window that follows the traffic, at most `maximum` (default 200 µs, the
    /// default of Linux KVM's `halt_poll_ns`, which this follows; see Documentation/virt/kvm/halt-polling.rst).
    ///
    /// The window starts at zero. When a message arrives within `maximum` after a read or write, but after the
    /// window, the window doubles (from 10 µs), up to `maximum`; when one arrives later than `maximum`, or a window
    /// opened by a write passed in vain before the next write, it is halved (KVM's `halt_poll_ns_shrink` default of
    /// 2), and drops to zero below 10 µs. A request/reply exchange whose peer answers within `maximum` is then served
    /// without thread wake-ups, and one late answer does not close the window; traffic slower than `maximum` closes
    /// it after a few messages, and an idle connection does not poll. Polling ends at once when other work is queued on the event loop, and goes on after it; it ends at
    /// most `maximum` after the first write that followed the last message, however many writes follow. At most
    /// half the processor cores of a process poll at once (none on a single core).
    /// - Parameter maximum: The largest window; a zero or negative one is ``off``.
    public static func adaptive(maximum: Duration = .microseconds(200)) -> BusyPolling {
        maximum > .zero ? BusyPolling(mode: .adaptive(maximum: maximum)) : .off
    }

    /// Polls for `duration` after every read and write: the latency mode. Under steady traffic the event loop's
    /// thread then uses a whole core, and one-way streams get slower (BENCHMARKS.md has the figures); for
    /// request/reply traffic, 100–200 µs covers the peer's turnaround on a busy machine.
    /// - Parameter duration: How long; a zero or negative one is ``off``.
    public static func fixed(_ duration: Duration) -> BusyPolling {
        duration > .zero ? BusyPolling(mode: .fixed(duration)) : .off
    }

    /// `off`, `adaptive(maximum: 200 µs)` or `fixed(100 µs)`.
    public var description: String {
        switch self.mode {
        case .off: "off"
        case .adaptive(let maximum): "adaptive(maximum: \(Self.microseconds(maximum)) µs)"
        case .fixed(let duration): "fixed(\(Self.microseconds(duration)) µs)"
        }
    }

    /// The window in nanoseconds, and whether it adapts; `nil` when off.
    var window: (nanoseconds: UInt64, adaptive: Bool)? {
        switch self.mode {
        case .off: nil
        case .adaptive(let maximum): (Self.nanoseconds(maximum), true)
        case .fixed(let duration): (Self.nanoseconds(duration), false)
        }
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0 else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return .max }
        let (total, overflowAgain) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
        return overflowAgain ? .max : total
    }

    private static func microseconds(_ duration: Duration) -> UInt64 {
        Self.nanoseconds(duration) / 1_000
    }
}
