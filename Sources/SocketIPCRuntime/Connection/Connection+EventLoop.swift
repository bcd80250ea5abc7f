import NIOCore
import SocketIPCCore
import Synchronization

// MARK: - Event loop side (called by ConnectionChannelHandler)

extension Connection {
    /// Marks the start of a read batch: what is queued during it is flushed by ``readBatchEnded()``.
    @inline(__always)
    func readBatchStarted() {
        self.busyPoller?.messageArrived()
        self.state.withLock { $0.readBatchStarted() }
    }

    /// Flushes what the read batch queued.
    func readBatchEnded() {
        self.flushPendingWrites()
    }

    /// Writes every queued frame and flushes. Runs on the event loop.
    ///
    /// The ``writer`` writes what it can at once (on Linux straight to the socket with `send(2)`, while the channel
    /// has no writes of its own pending, which skips the channel's pipeline and write queue on the common path);
    /// whatever it leaves goes through the channel.
    /// - Parameter force: Whether to hand everything to the channel even while it still holds earlier writes (see
    ///   ``StateMachine/flush(force:)``): before a write that must come after everything queued (a close's).
    func flushPendingWrites(force: Bool = false) {
        self.eventLoop.assertInEventLoop()
        let action = self.state.withLock { $0.flush(force: force) }
        if let poller = self.busyPoller {
            if self.busyPollsAdaptively {
                let wrote: Bool
                if case .write = action { wrote = true } else { wrote = false }
                poller.armAdaptively(maximum: self.busyPollNanoseconds, wrote: wrote)
            } else {
                poller.arm(for: self.busyPollNanoseconds)
            }
        }
        guard case .write(let batch, let mayWriteDirectly, let writersWaiting) = action else { return }
        let tail = batch.tail
        // While a keepalive ping is out: what the peer holds unread, just before and just after this write, tells
        // whether it reads (KeepaliveReadWatch); one flag's look otherwise.
        let readWatch = self.calls.readWatch
        let watching = readWatch.watching
        if watching { readWatch.beforeWrite(unread: self.unreadBytes()) }
        defer { if watching { readWatch.afterWrite(unread: self.unreadBytes()) } }
        let (unwritten, refused) = self.writer.write(batch, mayWriteDirectly: mayWriteDirectly)
        if refused {
            // None of it reached the peer: a call whose open frame is in it never left (see neverSent(from:)).
            let bytes = unwritten.reduce(0) { $0 + $1.readableBytes }
            self.state.withLock { $0.sendRefused(unwrittenBytes: bytes) }
        }
        if !unwritten.isEmpty {
            self.writeThroughChannel(unwritten)
        }
        if let tail { self.bufferPool.recycleCoalescing(tail) }
        // A writer that starts waiting after the lock above waits for a fuller queue, which a later flush drains.
        if writersWaiting { self.perform(self.state.withLock { $0.writersMayResume() }) }
    }

    /// Flushes everything queued, and writes an empty buffer through the channel after it. Runs on the event loop.
    /// - Returns: A future that completes once everything queued before has reached the socket (the kernel holds it
    ///   for the peer), or fails when the channel closes first.
    func writeMarker() -> EventLoopFuture<Void> {
        self.flushPendingWrites(force: true)
        return self.writeThroughChannel(CollectionOfOne(ByteBuffer()))
    }

    /// Writes `buffers` through the channel and flushes; until they are written, flushes do not write directly.
    /// Runs on the event loop.
    /// - Returns: A future that completes once the last buffer is written, or fails when the channel cannot write.
    @discardableResult
    func writeThroughChannel(_ buffers: some Collection<ByteBuffer>) -> EventLoopFuture<Void> {
        self.state.withLock { $0.channelWriteStarted() }
        let written = self.writer.writeThroughChannel(buffers)
        written.whenComplete { result in
            // On the event loop: the channel wrote what it held; frames a flush kept back meanwhile go now. Not when
            // the write failed: the channel is closing, and NIO fails its writes after it closed the socket and
            // before it reports the close, so the descriptor's number may already belong to another socket.
            let flushNow = self.state.withLock { $0.channelWriteCompleted() }
            if flushNow, case .success = result { self.flushPendingWrites() }
        }
        return written
    }

    /// Called when the channel reports its close (`channelInactive`): nothing may write to the descriptor from now
    /// on. NIO closed the socket before, and failed the channel's pending writes in between, so what runs on those
    /// failures must not write directly either (``writeThroughChannel(_:)`` does not flush then, and
    /// ``SocketFrameWriter`` checks that the channel is active).
    func socketClosed() {
        self.state.withLock { $0.socketClosed() }
    }

    /// Called when the channel's writability changed: writers waiting for it go on once it is writable and the
    /// queue is below its high watermark.
    func writabilityChanged(_ isWritable: Bool) {
        self.perform(self.state.withLock { $0.writabilityChanged(isWritable) })
    }

    /// Counts a request of the peer as unanswered: returns how many are and the ``Reply`` that answers it, or `nil`
    /// when the peer sent more frames that need an answer than it may while not reading this side's writes
    /// (``floodError``), and the connection must close.
    ///
    /// On a server, the request counts against its user's requests in progress too
    /// (``ServerConfiguration/maximumConcurrentRequestsPerUser``): at that bound, `unanswered` is `Int.max`, so that
    /// the channel handler asks to pause (``pauseReading()``).
    @inline(__always)
    func requestReceived(id: UInt32, bytes: Int) -> (unanswered: Int, reply: Reply)? {
        let received = self.state.withLock { $0.answerOwed() ? $0.requestReceived(id: id, bytes: bytes) : nil }
        guard let received else { return nil }
        // Counted unless the connection closed (then 0): given back when answered, or with the close.
        if received.unanswered > 0, let requests = self.calls.userCalls?.requests, requests.received() {
            return (.max, Reply(connection: self, id: id, ticket: received.ticket))
        }
        return (received.unanswered, Reply(connection: self, id: id, ticket: received.ticket))
    }

    /// The peer pinged, or opened a call that this side answers at once: `nil`, or the error to close with when
    /// the peer sent more frames that need an answer than it may while not reading this side's writes.
    func answerOwed() -> SocketIPCError? {
        self.state.withLock { $0.answerOwed() } ? nil : Self.floodError
    }

    /// Why a peer that sends requests, pings or calls without reading their answers is closed.
    static var floodError: SocketIPCError {
        SocketIPCError(
            .protocolViolation,
            "the peer sent more than \(StateMachine.maximumAnswersOwedUnread) requests, pings or calls while not "
                + "reading this side's answers"
        )
    }

    /// Called by the channel handler when the peer's unanswered requests reached the maximum: returns `true` if the
    /// handler must stop reading, in which case a ``ReadingMayResume`` event reaches its pipeline once an answer
    /// makes room; `false` if answers already made room.
    ///
    /// On a server whose peer's user has ``ServerConfiguration/maximumConcurrentRequestsPerUser`` requests in
    /// progress across its connections, the handler stops reading too, until answers (on any of them) bring the user
    /// down to three quarters of it (``UserRequests``); the same event tells it to go on.
    func pauseReading() -> Bool {
        if self.state.withLock({ $0.pauseReading() }) == .pause { return true }
        return self.waitsForUserRequestRoom()
    }

    /// On a server, whether the peer's user has ``ServerConfiguration/maximumConcurrentRequestsPerUser`` requests in
    /// progress: then the channel handler hands out no request and stops reading, and a ``ReadingMayResume`` event
    /// reaches its pipeline once answers (on any of the user's connections) make room. Checked before a request is
    /// handed out, so that a user's many connections do not each hand out one more (found by a review: 800
    /// connections of one user at a bound of 50 had 849 `serve --exec` commands running, and another user's request
    /// waited 15 s for one of the server's 600).
    @inline(__always)
    func waitsForUserRequestRoom() -> Bool {
        guard let requests = self.calls.userCalls?.requests, requests.count >= requests.limit else { return false }
        return requests.waitForRoom(ObjectIdentifier(self)) { [weak self] in self?.resumeReading() }
    }

    /// Whether this side's request `id` waits for its reply.
    func waitsForReply(_ id: UInt32) -> Bool {
        self.state.withLock { $0.isRequestPending(id: id) }
    }

    /// Whether a request is in flight either way: one of the peer's waits for its answer, or one of this side's for
    /// its reply.
    var hasRequestsInFlight: Bool {
        self.state.withLock { $0.hasRequestsInFlight }
    }

    /// A reply arrived; one to a request that timed out or was cancelled is dropped: nobody waits for it any more.
    func replyReceived(id: UInt32, result: Result<ByteBuffer, SocketIPCError>) {
        self.finishRequest(id, with: result.mapError { $0 })
    }

    /// The peer sent going-away. After reason `0x00` this side sends no new requests, answers the peer's requests
    /// still unanswered and waits for the replies to its own, then closes (the peer closes too once it has answered
    /// this side's requests). After any other reason the caller closes the connection at once.
    func peerIsGoingAway(_ reason: GoAwayReason, message: String) {
        let what =
            switch reason {
            case .normal: "the peer is going away"
            case .unauthorized: "the peer refused this connection"
            case .resourceExhausted: "the peer closed the connection: it is short of a resource"
            case .protocolViolation: "the peer closed the connection over a protocol violation"
            case .messageTooLarge: "the peer closed the connection: a frame was larger than it accepts"
            case .unsupportedVersion: "the peer closed the connection: it does not speak this protocol version"
            }
        let text = message.isEmpty ? what : "\(what): \(message)"
        let error = SocketIPCError(reason.errorCode, text)
        let action = self.state.withLock { $0.peerIsGoingAway(isNormal: reason == .normal, error: error) }
        self.logger.debug("peer is going away", metadata: ["reason": "\(reason)", "message": "\(message)"])
        self.calls.receiver.withLock({ $0 })?.peerIsGoingAway(self)
        if action == .close { self.closeAfterGoingAway() }
    }

    /// Fails everything that waits on this connection; called once, when the channel becomes inactive.
    func closed(error: SocketIPCError?) {
        let (action, unanswered) = self.state.withLock { state in
            let unanswered = state.peerRequestsUnanswered
            return (state.closed(error: error), unanswered)
        }
        self.failReadConfirmations()
        // The peer's requests still unanswered no longer count against its user (their handlers are cancelled).
        if let requests = self.calls.userCalls?.requests {
            requests.stopWaiting(ObjectIdentifier(self))
            requests.ended(unanswered)
        }
        guard case .fail(let requests, let writers, let finalError) = action else { return }
        for pending in requests {
            pending.timer?.cancel()
            pending.continuation.resume(throwing: finalError)
        }
        for writer in writers { writer.resume(throwing: finalError) }
    }

    /// What a client's requests, calls and writes still waiting fail with when its server closed the connection in
    /// order (no I/O error): a server says going-away before it closes (PROTOCOL.md), so either it went away and
    /// closed before they ended (its grace period passed), or it exited, crashed or was killed. `nil` (the plain
    /// ``SocketIPCError/closed``) on a server's side, where a client's close is ordinary, and after this side's own
    /// ``close()`` or ``abort()``.
    var orderlyCloseError: SocketIPCError? {
        guard self.isInitiator, !self.calls.closedLocally.load(ordering: .relaxed) else { return nil }
        if let goingAway = self.peerGoingAwayError {
            return SocketIPCError(
                .connectionClosed,
                "the server closed the connection before this ended, after going away (\(goingAway.message))"
            )
        }
        return SocketIPCError(
            .connectionClosed,
            "the server closed the connection without going away: it exited, crashed or was killed"
        )
    }

    /// What the peer said when it announced it is going away, once it has.
    package var peerGoingAwayError: SocketIPCError? { self.state.withLock { $0.peerGoingAwayError } }

    /// The error the connection closed with, once it is closed.
    var closeError: SocketIPCError? { self.state.withLock { $0.closeError } }
}

/// The event a ``Connection`` fires through its channel's pipeline when an answer brought the peer's unanswered
/// requests below ``ConnectionOptions/maximumConcurrentRequests`` (and their bytes below the maximum message size)
/// while reading was paused for them.
struct ReadingMayResume: Sendable {}

/// The event-loop turn a ``DecodeStep/yieldTurn`` gave up has passed: the channel handler hands out what it kept.
struct YieldedTurnEnded: Sendable {}
