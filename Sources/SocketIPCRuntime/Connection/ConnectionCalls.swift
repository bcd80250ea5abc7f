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
    /// Whether the peer reads while a keepalive ping is out (``KeepaliveReadWatch``); touched on the event loop only.
    let readWatch = KeepaliveReadWatch()
    /// The pings that wait for the peer to have read what was sent before them (``Connection/waitUntilPeerHasRead()``).
    let readConfirmations = Mutex<ReadConfirmations>(ReadConfirmations())
    /// How fast the peer may cancel its calls before its new ones are refused (``CancelAllowance``); touched on the
    /// event loop only.
    let cancels = Mutex<CancelAllowance>(CancelAllowance())
    /// The call account the peer's user shares across its connections to a server (``UserCallAccounts``): its
    /// cancel allowance, spent with ``cancels``, and its calls in progress; `nil` on a client's connection.
    let userCalls: UserCallAccount?
    /// How many of the peer's opens were refused for its cancels.
    let opensRefusedForCancels = Atomic<Int>(0)

    struct Keepalive {
        /// The id of the ping waiting for its pong, if any.
        var outstanding: UInt32?
        /// The timer of the next ping, or of the outstanding ping's deadline.
        var timer: Scheduled<Void>?
        var sent: UInt32 = 0
    }

    struct ReadConfirmations {
        /// A wait for the pong of one ping.
        struct Waiter {
            let continuation: CheckedContinuation<Void, any Error>
            /// How many keepalive pings had been sent once this ping was queued (so at least as many as went before
            /// it): a pong to a later one means the peer skipped this ping (pongs come in the order of their pings).
            /// `UInt32.max` until the ping is queued.
            var keepalivePingsBefore: UInt32 = .max
        }

        /// The waiters, by the id of their ping.
        var waiting: [UInt32: Waiter] = [:]
        /// The next ping's id: from 2^31 up, apart from the keepalive's, which count from 1.
        var next: UInt32 = 1 << 31
        /// What the connection closed with, once it has: later waiters fail with it at once.
        var closed: (any Error)?
    }

    init(isInitiator: Bool, userCalls: UserCallAccount? = nil) {
        self.isInitiator = isInitiator
        self.userCalls = userCalls
    }

    /// The time by the clock the cancel allowances read.
    func cancelClockNow() -> ContinuousClock.Instant {
        self.userCalls?.clock.now() ?? .now
    }

    /// The id of this side's next call: odd on the connecting side (1, 3, 5, ..., 0xFFFFFFFF), even on the accepting
    /// side (2, 4, 6, ..., 0xFFFFFFFE, 0); `nil` once all 2^31 are used. No id is used twice on a connection, as no
    /// HTTP/2 stream id is (RFC 9113, section 5.1.1): the peer keeps a call this side cancelled open until its handler
    /// ends, which this side cannot see, and would take a second open of its id for a protocol error, or its late
    /// answer for the new call's (found by a review: after the ids wrapped around, both happened).
    func nextCallID() -> UInt32? {
        let n = self.opened.wrappingAdd(1, ordering: .relaxed).oldValue
        guard n < 1 << 31 else { return nil }
        return UInt32(truncatingIfNeeded: n) &* 2 &+ (self.isInitiator ? 1 : 2)
    }

    /// Whether `id` is a call the peer opened (its parity is the peer's).
    func isPeerCallID(_ id: UInt32) -> Bool {
        (id & 1 == 1) != self.isInitiator
    }
}
