import NIOCore
import SocketIPCCore
import Synchronization

/// What a ``Connection`` keeps for calls and keepalive: the peer's hello flags, the call ids, the receiver of call
/// frames, the outstanding keepalive ping, and whether this side closed the connection itself.
final class ConnectionCalls: Sendable {
    /// Whether this side connected (a client): its calls have odd ids, the peer's even ones (as HTTP/2's streams).
    let isInitiator: Bool
    /// The flags of the peer's hello, once read.
    let peerFlags = Atomic<UInt8>(0)
    /// How many call ids this side has taken.
    let opened = Atomic<UInt64>(0)
    /// The services layer's receiver, once installed.
    let receiver = Mutex<(any CallFrameReceiver)?>(nil)
    /// Whether this side closed the connection (``Connection/close()``, ``Connection/abort()``, after going away).
    let closedLocally = Atomic<Bool>(false)
    /// The keepalive's state, touched on the event loop only (kept under a lock so that the class stays `Sendable`).
    let keepalive = Mutex<Keepalive>(Keepalive())
    /// How fast the peer may cancel its calls before its new ones are refused (``CancelAllowance``); touched on the
    /// event loop only.
    let cancels = Mutex<CancelAllowance>(CancelAllowance())
    /// The allowance the peer's user shares across its connections to a server (``UserCancelAllowances``), spent
    /// with ``cancels``; `nil` on a client's connection.
    let userCancels: SharedCancelAllowance?
    /// How many of the peer's opens were refused for its cancels.
    let opensRefusedForCancels = Atomic<Int>(0)

    struct Keepalive {
        /// The id of the ping waiting for its pong, if any.
        var outstanding: UInt32?
        /// The timer of the next ping, or of the outstanding ping's deadline.
        var timer: Scheduled<Void>?
        var sent: UInt32 = 0
    }

    init(isInitiator: Bool, userCancels: SharedCancelAllowance? = nil) {
        self.isInitiator = isInitiator
        self.userCancels = userCancels
    }

    /// The time by the clock the cancel allowances read.
    func cancelClockNow() -> ContinuousClock.Instant {
        self.userCancels?.clock.now() ?? .now
    }

    /// The id of this side's next call: odd on the connecting side (1, 3, 5, ...), even on the accepting side (2, 4,
    /// 6, ...), wrapping around after 2^31 calls. From then on an id may name a call still open (a watch opened long
    /// ago), which the peer would take for a second open of it, a protocol error: such ids are skipped. Before the
    /// first wrap every id is fresh, so the common case asks nothing.
    /// - Parameter isOpen: Whether a call of this side's with that id is still open.
    func nextCallID(skipping isOpen: (UInt32) -> Bool) -> UInt32 {
        while true {
            let n = self.opened.wrappingAdd(1, ordering: .relaxed).oldValue
            let id = UInt32(truncatingIfNeeded: n) &* 2 &+ (self.isInitiator ? 1 : 2)
            if n < 1 << 31 || !isOpen(id) { return id }
        }
    }

    /// Whether `id` is a call the peer opened (its parity is the peer's).
    func isPeerCallID(_ id: UInt32) -> Bool {
        (id & 1 == 1) != self.isInitiator
    }
}
