/// How long an event loop polls after a read or write in the adaptive mode (``BusyPolling/adaptive(maximum:)``):
/// the sizing rule alone, with the clock passed in, so that it can be tested without a clock or a socket.
///
/// It follows Linux KVM's halt polling (Documentation/virt/kvm/halt-polling.rst) with its current defaults: the
/// window starts at zero; a message that arrives within the maximum after the last read or write, but after the
/// window, doubles the window (from ``initialWindow``) up to the maximum; one that arrives later than the maximum
/// halves it (KVM's `halt_poll_ns_shrink` of 2, its default since Linux commit aeb1b22a3ac8, "KVM: Enable halt
/// polling shrink parameter by default": resetting to zero let one outlier close a window that steady traffic keeps
/// paying for). In addition, a window opened by a write that passed in vain and is followed by another write before
/// any message (a writer whose peer sends little back) is halved. A halved window below ``initialWindow`` drops to
/// zero, as in KVM since commit ae232ea46088, so traffic slower than the maximum closes it after a few messages and
/// it stays closed. Polling ends at most the maximum after the first write that followed the last message (after
/// the last message, while nothing was written since), however many writes follow it: a steady one-way stream of
/// writes, queued from another thread, would otherwise extend the poll from write to write and keep the loop from
/// its other sockets.
struct AdaptivePollWindow {
    /// The first window after zero, in nanoseconds: 10 µs, as KVM's `halt_poll_ns_grow_start`.
    static let initialWindow: UInt64 = 10_000

    /// The current window, in nanoseconds; 0 while polling does not pay.
    private(set) var window: UInt64 = 0
    /// The largest window, in nanoseconds, as the connections last asked.
    private(set) var maximum: UInt64 = 0
    /// When the loop last read or wrote, if no message has arrived since.
    private var armedAt: UInt64?
    /// Whether the last poll, armed by a write, ended with its window and no message has arrived since.
    private var missed = false
    /// Whether the last arm wrote something: only a poll for the answer to a write counts as in vain when it
    /// passes; one armed by a read that wrote nothing may just pass while the application thinks.
    private var lastArmWrote = false
    /// When the last message arrived.
    private var lastMessageAt: UInt64?
    /// When the loop first wrote after the last message.
    private var firstWriteAt: UInt64?

    /// The loop read or wrote at `now`: returns how long to poll from now (0 for not at all).
    /// - Parameter wrote: Whether the loop wrote something (a read that wrote nothing also arms).
    mutating func armed(at now: UInt64, maximum: UInt64, wrote: Bool) -> UInt64 {
        if self.missed {
            self.missed = false
            self.shrink()
        }
        self.armedAt = now
        self.maximum = maximum
        self.lastArmWrote = wrote
        if wrote, self.firstWriteAt == nil { self.firstWriteAt = now }
        guard let origin = self.firstWriteAt ?? self.lastMessageAt else { return 0 }
        let elapsed = now &- origin
        let budget = elapsed < maximum ? maximum - elapsed : 0
        return min(self.window, budget)
    }

    /// A message arrived at `now`.
    mutating func messageArrived(at now: UInt64) {
        self.missed = false
        self.lastMessageAt = now
        self.firstWriteAt = nil
        guard let armedAt = self.armedAt else { return }
        self.armedAt = nil
        let waited = now &- armedAt
        if waited <= self.window {
            return  // the window caught it
        } else if waited <= self.maximum {
            self.window = min(self.maximum, max(Self.initialWindow, self.window &* 2))
        } else {
            self.shrink()
        }
    }

    /// Halves the window, to zero below ``initialWindow``.
    private mutating func shrink() {
        self.window = self.window / 2 >= Self.initialWindow ? self.window / 2 : 0
    }

    /// A poll ended with its window, no message having arrived.
    mutating func pollMissed() {
        self.missed = self.armedAt != nil && self.lastArmWrote
    }
}
