import NIOCore

/// Everything one end of a framed connection keeps track of, as a value without I/O: what is queued for the peer and
/// when it is flushed, who waits for the queue to drain, the requests waiting for their replies, the peer's requests
/// waiting for their answers, going-away in either direction, and how the connection closed.
///
/// The runtime's `Connection` keeps one under its lock. Each method is an event (something the API, the channel or a
/// timer did); it returns what the caller must do about it, as an action, once the lock is released: resume a
/// continuation, schedule a flush, cancel a timer, close. The machine never resumes, schedules or closes anything
/// itself, so it is tested with plain values in place of continuations and timers. The one call it makes out is
/// `register`'s `makeTimer` closure, run under the caller's lock once the request is registered, so that
/// registering, arming the timeout and seeing a cancellation take one lock.
///
/// ```
///   +------+  goAway(frame:), or peerIsGoingAway(isNormal: true)   +-----------+
///   | open | ----------------------------------------------------> | goingAway | -- drained: action .close
///   +------+                                                       +-----------+
///      |   \  peerIsGoingAway(isNormal: false)                          ^     |
///      |    \                 +------------+  goAway(frame:), or       |     |
///      |     +--------------> | peerFailed | -------------------------+     |
///      |                      +------------+  the peer's 0x00               |
///      |                            |                                       |
///      +----------------------------+---------------------------------------+
///                                   | closed(error:), from any state
///                                   v
///                              +--------+
///                              | closed |
///                              +--------+
/// ```
///
/// - `open`: frames flow both ways.
/// - `goingAway`: this side sent going-away, or the peer sent it with reason `0x00`. New requests are refused; the
///   connection closes once every request the peer made is answered and every request this side made has its reply
///   (or failed: timed out, cancelled). The peer's requests are still answered meanwhile.
/// - `peerFailed`: the peer went away with another reason; the channel handler closes the connection at once, and
///   what waits fails with that reason.
/// - `closed`: the channel closed; everything that waited has failed, and everything new fails, with the close's
///   error.
///
/// What is on its way to the peer (``Outbound``: the queue, the flush, writability, writers waiting, writes in the
/// channel) is kept beside the state, not in its cases: it exists in every state, and the send path mutates it in
/// place without moving the state's payload.
///
/// - `RequestContinuation`: what waits for a reply (the runtime's continuation).
/// - `WriteWaiter`: what waits for the queue to drain below its high watermark.
/// - `Timer`: a request's timeout, cancelled once the request ends.
@usableFromInline
package struct ConnectionStateMachine<RequestContinuation, WriteWaiter, Timer> {
    /// The lifecycle, with the data each stage holds.
    @usableFromInline
    var state: State
    /// What is on its way to the peer; the same in every state.
    @usableFromInline
    var outbound: Outbound
    /// The queued bytes at or above which a sender waits, in bytes
    /// (`ConnectionOptions.writeBufferHighWatermark`).
    @usableFromInline
    let writeBufferHighWatermark: Int
    /// The most requests of the peer that may wait for their answer before the channel handler stops handing out
    /// more (`ConnectionOptions.maximumConcurrentRequests`).
    @usableFromInline
    let maximumConcurrentRequests: Int
    /// The most payload bytes of the peer's large requests (``largeRequestSize`` bytes or more each) that may wait for
    /// their answer before the channel handler stops handing out more; one such request is always let through.
    @usableFromInline
    let maximumUnansweredRequestBytes: Int

    /// Requests of at least this many bytes (64 KiB) count by their size against
    /// ``maximumUnansweredRequestBytes``; smaller ones only against ``maximumConcurrentRequests``, so that the common
    /// small request costs no bookkeeping.
    @inlinable
    package static var largeRequestSize: Int { 64 * 1024 }

    /// Makes the machine of a connection that just opened.
    /// - Parameters:
    ///   - writeBufferHighWatermark: The queued bytes at or above which a sender waits.
    ///   - maximumConcurrentRequests: The most unanswered requests of the peer before reading pauses.
    ///   - maximumUnansweredRequestBytes: The most bytes of the peer's unanswered large requests before reading
    ///     pauses; by default no limit.
    @inlinable
    package init(
        writeBufferHighWatermark: Int,
        maximumConcurrentRequests: Int,
        maximumUnansweredRequestBytes: Int = .max
    ) {
        self.state = .open(Requests())
        self.outbound = Outbound()
        self.writeBufferHighWatermark = writeBufferHighWatermark
        self.maximumConcurrentRequests = maximumConcurrentRequests
        self.maximumUnansweredRequestBytes = maximumUnansweredRequestBytes
    }

    // MARK: - State

    /// The stages of a connection's life, each with what it holds. The cases that carry errors are `indirect`, so
    /// that the state stays a few words: the hot path moves it in and out of `.modifying` without copying an error.
    @usableFromInline
    enum State {
        /// Frames flow both ways.
        case open(Requests)
        /// Going-away was sent or received (reason `0x00`): no new requests; closes once drained. `peerError` is
        /// what the peer's going-away said, once it has sent one (it fails new requests in preference to this
        /// side's own announcement, and a reason other than `0x00` is the close's error).
        indirect case goingAway(Requests, peerError: SocketIPCError?)
        /// The peer went away with a reason other than `0x00`; the channel handler is closing the connection.
        indirect case peerFailed(Requests, error: SocketIPCError)
        /// The channel closed.
        indirect case closed(Closed)
        /// Only while an event mutates a case's payload: taking the payload out first leaves it uniquely
        /// referenced, so mutating it does not copy its storage.
        case modifying
    }

    /// A request of this side waiting for its reply.
    @usableFromInline
    package struct PendingRequest {
        /// What the reply resumes.
        @usableFromInline
        package var continuation: RequestContinuation
        /// The request's timeout, if it has one; cancelled once the request ends.
        @usableFromInline
        package var timer: Timer?

        /// Pairs `continuation` with its `timer`.
        @inlinable
        package init(continuation: RequestContinuation, timer: Timer?) {
            self.continuation = continuation
            self.timer = timer
        }
    }

    /// The requests in flight either way, while the connection is open.
    @usableFromInline
    struct Requests {
        /// This side's requests waiting for their replies, by id.
        @usableFromInline
        var pending: [UInt32: PendingRequest] = [:]
        /// The peer's requests handed to the handler and not yet answered.
        @usableFromInline
        var unanswered = 0
        /// The tickets of the peer's unanswered requests, so that each is answered at most once.
        @usableFromInline
        var tickets = ReplyTickets()
        /// Whether the channel handler stopped handing out the peer's frames because ``unanswered`` reached the
        /// maximum, or the bytes of ``largeBytes`` theirs: the answer that clears it tells the handler to go on.
        @usableFromInline
        var readingPaused = false
        /// The sum of the sizes of the peer's unanswered large requests (``ConnectionStateMachine/largeRequestSize``
        /// bytes or more), each kept with its ticket in ``tickets``.
        @usableFromInline
        var largeBytes = 0
        /// Calls in progress either way (the services layer's, kinds `0x06` to `0x0A`): a connection going away
        /// waits for them as for requests.
        @usableFromInline
        var activeCalls = 0

        @inlinable
        init() {}

        /// Whether a connection that went away has nothing left to wait for.
        @inlinable
        var isDrained: Bool { self.pending.isEmpty && self.unanswered == 0 && self.activeCalls == 0 }
    }

    /// What a closed connection remembers.
    @usableFromInline
    struct Closed {
        /// What everything new fails with.
        @usableFromInline
        var error: SocketIPCError
        /// What the peer's going-away said, if it sent one.
        @usableFromInline
        var peerError: SocketIPCError?
        /// Where in this side's byte stream nothing reached the peer: what was still queued at the close, or what
        /// the socket refused before (``Outbound/refusedFrom``), whichever comes first.
        @usableFromInline
        var unsentFrom: Int

        @inlinable
        init(error: SocketIPCError, peerError: SocketIPCError?, unsentFrom: Int) {
            self.error = error
            self.peerError = peerError
            self.unsentFrom = unsentFrom
        }
    }

    /// What is on its way to the peer.
    @usableFromInline
    struct Outbound {
        /// The frames queued and not yet flushed.
        @usableFromInline
        var queue = OutboundQueue()
        /// Whether a flush is scheduled on the event loop: frames queued meanwhile need no other.
        @usableFromInline
        var flushScheduled = false
        /// Whether the channel handler is in a read batch, which flushes when it ends.
        @usableFromInline
        var readBatchActive = false
        /// The channel's writability (NIO's watermarks on what the channel itself holds).
        @usableFromInline
        var channelWritable = true
        /// Senders waiting for the queue to drain and the channel to be writable, in order, each with the id its
        /// sender may cancel the wait by (``ConnectionStateMachine/cancelWriteWaiter(id:)``).
        @usableFromInline
        var writeWaiters: [(id: UInt64, waiter: WriteWaiter)] = []
        /// Writes handed to the channel and not yet completed; while there are any, flushes go through the channel
        /// too, so that bytes leave in order.
        @usableFromInline
        var writesInChannel = 0
        /// Whether a flush left frames queued until the channel's writes complete (``flush(force:)``).
        @usableFromInline
        var flushWhenChannelWritten = false
        /// Cleared when the channel closes its socket: the descriptor number may then belong to another file.
        @usableFromInline
        var descriptorIsOpen = true
        /// Where in this side's byte stream (counted as ``OutboundQueue/takenBytes`` counts) the socket refused a
        /// byte for good (``ConnectionStateMachine/sendRefused(unwrittenBytes:)``): nothing from there on reached the
        /// peer. `nil` while no send was refused.
        @usableFromInline
        var refusedFrom: Int?
        /// Frames of the peer that this side answers (requests, pings, calls' opens) that came while the peer was
        /// not reading this side's writes, since it last was (``ConnectionStateMachine/answerOwed()``).
        @usableFromInline
        var answersOwedUnread: UInt32 = 0

        @inlinable
        init() {}

        /// Whether a flush must be scheduled for what was just queued (none is pending and no read batch will
        /// flush); marks one scheduled if so.
        @inlinable
        @inline(__always)
        mutating func scheduleFlushIfNeeded() -> Bool {
            if self.flushScheduled || self.readBatchActive { return false }
            self.flushScheduled = true
            return true
        }

        /// Whether a sender may go on: the queue is below `highWatermark` bytes and the channel writable.
        @inlinable
        @inline(__always)
        func isWritable(highWatermark: Int) -> Bool {
            self.channelWritable && self.queue.byteCount < highWatermark
        }
    }

    /// Runs `body` on the requests of a state that has them, with the state `.modifying` meanwhile, so that the
    /// payload is uniquely referenced and mutating it does not copy; `body`'s second argument says whether the
    /// connection is going away. Returns `closed` in the closed state.
    @inlinable
    @inline(__always)
    mutating func modifyRequests<Result>(
        closed: @autoclosure () -> Result,
        _ body: (inout Requests, _ goingAway: Bool) -> Result
    ) -> Result {
        switch self.state {
        case .open(var requests):
            self.state = .modifying
            let result = body(&requests, false)
            self.state = .open(requests)
            return result
        case .goingAway(var requests, let peerError):
            self.state = .modifying
            let result = body(&requests, true)
            self.state = .goingAway(requests, peerError: peerError)
            return result
        case .peerFailed(var requests, let error):
            self.state = .modifying
            let result = body(&requests, false)
            self.state = .peerFailed(requests, error: error)
            return result
        case .closed:
            return closed()
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    // MARK: - Queries

    /// Whether the connection is still open: not yet closed by either side (going away still counts as open).
    @inlinable
    package var isOpen: Bool {
        if case .closed = self.state { return false }
        return true
    }

    /// The error the connection closed with, once it is closed.
    @inlinable
    package var closeError: SocketIPCError? {
        if case .closed(let closed) = self.state { return closed.error }
        return nil
    }

    /// What the peer said when it announced it is going away, once it has (in any state).
    package var peerGoingAwayError: SocketIPCError? {
        switch self.state {
        case .open: nil
        case .goingAway(_, let peerError): peerError
        case .peerFailed(_, let error): error
        case .closed(let closed): closed.peerError
        case .modifying: preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// Whether this side or the peer announced going away with reason `0x00`, so that the connection closes once
    /// drained; `false` once closed.
    package var isGoingAway: Bool {
        if case .goingAway = self.state { return true }
        return false
    }

    /// Whether a request is in flight either way: one of the peer's waits for its answer, or one of this side's for
    /// its reply. `false` once closed.
    @inlinable
    package var hasRequestsInFlight: Bool {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _):
            requests.unanswered > 0 || !requests.pending.isEmpty || requests.activeCalls > 0
        case .closed:
            false
        case .modifying:
            preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// Bytes queued and not yet flushed.
    @inlinable
    package var queuedBytes: Int { self.outbound.queue.byteCount }

    /// Bytes flushes have taken from the queue so far, wrapping (``OutboundQueue/takenBytes``).
    package var takenBytes: Int { self.outbound.queue.takenBytes }

    /// Where the next frame queued starts in this side's byte stream: bytes taken by flushes so far and bytes
    /// queued. Compared with ``neverSent(from:)`` once the connection closed, it tells whether that frame left.
    package var nextOutboundOffset: Int { self.outbound.queue.takenBytes &+ self.outbound.queue.byteCount }

    /// The socket refused the rest of a flush for good (`EPIPE`, `ECONNRESET`: the peer is gone or shut its reading
    /// side down): the last `unwrittenBytes` bytes taken never reached the peer, nor will anything after them.
    package mutating func sendRefused(unwrittenBytes: Int) {
        guard self.outbound.refusedFrom == nil else { return }
        self.outbound.refusedFrom = self.outbound.queue.takenBytes &- unwrittenBytes
    }

    /// Whether nothing from `offset` on (a ``nextOutboundOffset`` read when a frame was queued) reached the peer:
    /// the connection closed with that frame still queued, or the socket refused it. `false` while open, and
    /// whenever a byte of it may have left (handed to the channel, which may have written part of it).
    package func neverSent(from offset: Int) -> Bool {
        guard case .closed(let closed) = self.state else { return false }
        return offset >= closed.unsentFrom
    }

    /// Writes handed to the channel and not yet completed.
    @inlinable
    package var channelWritesPending: Int { self.outbound.writesInChannel }

    /// Whether a sender on the event loop should flush now rather than wait for the scheduled flush: `threshold`
    /// bytes or more are queued, and no read batch is in progress (whose end flushes anyway). Bounds the coalescing
    /// buffer of a sender that queues many frames without yielding, as Go's `bufio.Writer` writes when its buffer
    /// is full, so that the buffer stays small enough to be reused while warm in the cache.
    @inlinable
    package func shouldFlushEarly(threshold: Int) -> Bool {
        self.outbound.queue.byteCount >= threshold && !self.outbound.readBatchActive
    }

    /// Whether this side's request `id` waits for its reply: its id may not be given to another request yet.
    package func isRequestPending(id: UInt32) -> Bool {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _): requests.pending[id] != nil
        case .closed: false
        case .modifying: preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// How many of this side's requests wait for their reply.
    package var pendingRequestCount: Int {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _): requests.pending.count
        case .closed: 0
        case .modifying: preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }

    /// How many of the peer's requests wait for their answer.
    package var unansweredRequestCount: Int {
        switch self.state {
        case .open(let requests), .goingAway(let requests, _), .peerFailed(let requests, _): requests.unanswered
        case .closed: 0
        case .modifying: preconditionFailure("ConnectionStateMachine re-entered while modifying its state")
        }
    }
}
