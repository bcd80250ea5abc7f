import NIOCore

extension ConnectionChannelHandler {
    /// Starts the handshake timer (when the connection has a handshake timeout) and the idle timer (when it has an
    /// idle timeout).
    func startTimers(context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        if let timeout = self.handshakeTimeout, !self.state.isEstablished {
            let fire = {
                self.handshakeTimer = nil
                if case .failTimedOut(let error) = self.state.handshakeTimedOut(after: timeout) {
                    self.tellPeerAndClose(error, context: context, linger: false)
                }
            }
            if let deadline = self.lifecycle.handshakeDeadline {
                // The server's clock started when it accepted the connection, which may have waited for a slot since.
                self.handshakeTimer = loop.scheduleTask(deadline: deadline, fire)
            } else {
                self.handshakeTimer = loop.scheduleTask(in: .init(timeout), fire)
            }
        }
        if let timeout = self.options.idleTimeout {
            self.lastActivity = .now()
            self.scheduleIdleCheck(at: self.lastActivity + .init(timeout), context: context)
        }
        if let timeout = self.options.pendingDescriptorTimeout, self.connection?.descriptorPassing != nil {
            self.schedulePendingDescriptorCheck(after: timeout, seen: nil, context: context)
        }
    }

    /// Checks, every `timeout`, whether descriptors the peer passed still wait for a frame to take them and none
    /// moved on since the last check (`seen`: what it found then, if descriptors waited and this side held nothing
    /// back): if so, they waited at least `timeout`, and the connection fails with `protocolViolation`, closing them
    /// (D-Bus's `pending_fd_timeout`; see ``ConnectionOptions/pendingDescriptorTimeout``).
    private func schedulePendingDescriptorCheck(after timeout: Duration, seen: UInt64?, context: ChannelHandlerContext) {
        self.pendingDescriptorTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(timeout)) {
            self.pendingDescriptorTimer = nil
            guard let passing = self.connection?.descriptorPassing, self.state.mayHandleFrames else { return }
            // While this side holds the peer's frames back because its handler has not answered (paused at the
            // maximum of unanswered requests), the wait is this side's doing: it does not count (found by a review: a
            // client whose descriptors queued behind a slow handler's request was closed). Reading held while the
            // peer does not read this side's writes does count: a peer gone with its own end held here reads nothing;
            // so does a turn given up that waits for the channel to be writable again, for the same reason.
            let heldBack =
                self.inbound.isPaused || (self.inbound.isYielding && !self.inbound.yieldWaitsForWritability)
            let pending = passing.pendingDescriptors()
            if pending.waiting, !heldBack, let seen, seen == pending.progress {
                self.fail(
                    SocketIPCError(
                        .protocolViolation,
                        "descriptors the peer passed waited more than \(timeout) for the frame that takes them "
                            + "(ConnectionOptions.pendingDescriptorTimeout)"
                    ),
                    context: context
                )
                return
            }
            // Held back, the period does not count, but the wait seen before it still does: a check that fell in a
            // pause and started the count again let a connection whose peer was gone, its own end held here, last
            // three periods and more instead of two (found by a review).
            let stillSeen = heldBack ? (seen == pending.progress ? seen : nil) : pending.progress
            self.schedulePendingDescriptorCheck(
                after: timeout, seen: pending.waiting ? stillSeen : nil, context: context
            )
        }
    }

    /// Starts the write timer when the channel stops being writable, and stops it when it is writable again: a peer
    /// that leaves this side's writes unread (above the channel's high watermark, 2 MiB) for all of ``writeTimeout``
    /// has its connection closed, as nginx's `send_timeout` closes a client that takes nothing for 60 s. A server
    /// stops reading from such a peer, so without it the connection would last for good: a review's peer passed its
    /// own end of the connection in a descriptors frame that the server never read, and exited; with no process left
    /// the connection never saw end-of-file, and 278 such connections of two users held the server at
    /// `maximumConnections`, every other user refused, until it was restarted.
    func watchWrites(isWritable: Bool, context: ChannelHandlerContext) {
        guard let timeout = self.writeTimeout else { return }
        if isWritable {
            self.writeTimer.take()?.cancel()
            return
        }
        guard self.writeTimer == nil else { return }
        self.scheduleWriteCheck(after: timeout, buffered: Self.bufferedBytes(context), context: context)
    }

    /// Checks after `timeout` whether the channel is writable again (the peer took enough of this side's writes to
    /// bring it below its low watermark) or fewer bytes wait in it than `buffered`; then it checks again later.
    /// Otherwise the connection closes. (What waits in the channel is refilled from the connection's queue as the
    /// peer reads, so a peer that reads but takes less than the gap between the watermarks, 1 MiB, in `timeout` can
    /// still be closed: the measure is that gap, not every byte.)
    private func scheduleWriteCheck(after timeout: Duration, buffered: Int?, context: ChannelHandlerContext) {
        self.writeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(timeout)) {
            self.writeTimer = nil
            guard !context.channel.isWritable, self.connection != nil else { return }
            let now = Self.bufferedBytes(context)
            if let now, let buffered, now < buffered {
                self.scheduleWriteCheck(after: timeout, buffered: now, context: context)
                return
            }
            self.fail(
                SocketIPCError(
                    .peerNotResponding,
                    "the peer left this side's writes above the channel's watermarks for \(timeout), taking too little of them "
                        + "(ServerConfiguration.writeTimeout)"
                ),
                context: context
            )
        }
    }

    /// The bytes written to the channel and not yet taken by the socket, where the channel tells.
    private static func bufferedBytes(_ context: ChannelHandlerContext) -> Int? {
        try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)
    }

    /// Checks at `deadline` whether the connection has been idle for the idle timeout: no bytes read and no request
    /// in flight either way. If so, says going-away `0x00` ("idle timeout") and closes; if not, checks again when
    /// it would be.
    private func scheduleIdleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleTimer = nil
            guard let connection = self.connection, let timeout = self.options.idleTimeout, self.state.mayHandleFrames
            else { return }
            let now = NIODeadline.now()
            // A connection whose handshake is not complete is not idle: the handshake timeout governs it (a loaded
            // machine can take longer than a short idle timeout to deliver the peer's hello).
            if connection.hasRequestsInFlight || !self.state.isEstablished { self.lastActivity = now }
            let idleUntil = self.lastActivity + .init(timeout)
            guard idleUntil <= now else {
                self.scheduleIdleCheck(at: idleUntil, context: context)
                return
            }
            if self.logger.logLevel <= .debug {
                connection.logger.debug("closing an idle connection", metadata: ["timeout": "\(timeout)"])
            }
            connection.goAway(.normal, message: "idle timeout")
        }
    }

    /// The decoder met something it cannot continue after: tell the peer why and close. (A peer the server's
    /// authorization policy refuses never gets here: the server answers it with a ``RefusalChannelHandler``.)
    /// - Parameter reason: The going-away reason to send; by default the one of `error`'s code.
    func fail(_ error: SocketIPCError, reason: GoAwayReason? = nil, context: ChannelHandlerContext) {
        guard case .tellPeerAndClose(let error) = self.state.protocolFailed(error) else { return }
        self.tellPeerAndClose(error, reason: reason, context: context, linger: true)
        // The connection is over for its users now, not once the going-away is written: a peer that does not read
        // may keep that write waiting up to closeTimeout (found by a review: a client that closed a flooding server
        // reported isOpen and no closeReason, and held its requests and calls, for 10 s). Its requests and calls fail
        // with the error at once and new ones are refused; connectionDidClose, and a server's count of its user's
        // connections, still wait for the socket's close.
        if let connection = self.connection {
            connection.closed(error: error)
            connection.callsClosed(error: error)
        }
    }

    /// Tells the peer why (a going-away frame) and closes.
    /// - Parameter linger: Whether to half-close and wait (at most ``ConnectionOptions/goAwayLingerTime``) for the
    ///   peer to close, so that a peer still writing reads the going-away frame instead of failing with `EPIPE`;
    ///   `false` closes once it is written, for a peer that was silent (its handshake timed out), so that its slot
    ///   is free as soon as it sees the close.
    private func tellPeerAndClose(
        _ error: SocketIPCError,
        reason: GoAwayReason? = nil,
        context: ChannelHandlerContext,
        linger: Bool
    ) {
        self.inbound.discard()
        // Reading goes on until the close, and what it brings is dropped, so that a peer blocked in a write to this
        // side gets to read the going-away. A read held back by a pause for requests (whose kept bytes were just
        // dropped) or by a turn given up is passed on now: before, nothing passed it on after a failure (found
        // reading this code for a flaky test). A server's wait to write still holds reads: its peer reads nothing.
        self.readIfHeld(context: context)
        // Debug only: the server logs each failed connection once, at notice and at a bounded rate.
        self.logger.debug(
            error.code == .timedOut ? "closing connection: handshake timeout" : "closing connection after a protocol error",
            metadata: ["socketipc.connection": "\(self.connectionID)", "error": "\(error)"]
        )
        var frame = context.channel.allocator.buffer(capacity: 64)
        frame.writeFrame(.goAway(reason ?? GoAwayReason(code: error.code), message: error.message))
        self.connection?.flushPendingWrites(force: true)
        let channel = context.channel
        let lingerTime = TimeAmount(self.options.goAwayLingerTime)
        // A peer that does not read may never let the going-away (nor what was queued before it) be written: the
        // close comes after closeTimeout however far the write got, or the connection would outlive every timeout.
        let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(self.options.closeTimeout)) {
            channel.close(promise: nil)
        }
        let written =
            self.connection?.writeThroughChannel(CollectionOfOne(frame))
            ?? context.writeAndFlush(Self.wrapOutboundOut(frame))
        written.assumeIsolated().whenComplete { _ in
            deadline.cancel()
            guard linger else {
                channel.close(promise: nil)
                return
            }
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: lingerTime) { channel.close(promise: nil) }
        }
    }
}
