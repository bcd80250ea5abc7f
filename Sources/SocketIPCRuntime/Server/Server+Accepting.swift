import Logging
import Metrics
import NIOCore
import NIOPosix
@_spi(SocketIPCRuntime) import SocketIPCCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension Server {
    /// Admits an accepted socket and serves it, parks it, or refuses it at once: while shutting down, at a
    /// connection limit, or when the authorization policy refuses the peer. A refusal is logged (at a bounded rate)
    /// and reported to ``ServerConfiguration/onConnectionRefused``. Runs on the accepting thread.
    /// - Parameter listenerRefusesDescriptors: Whether the listening socket refused descriptors before it listened
    ///   (one this server made), so that every connection on it refuses them from the start.
    func accept(_ descriptor: Int32, listenerRefusesDescriptors: Bool) {
        let id = ConnectionIDs.next()
        let policy = self.configuration.authorization
        let peer = PeerCredentials.read(
            descriptor: descriptor,
            includingGroups: policy.needsSupplementaryGroups,
            includingProcessIdentity: policy.needsProcessIdentity
        )
        let decision = policy.evaluate(peer)
        // The listening socket refuses descriptors, so the connection did from the start. Only a connection the
        // server serves with a relay takes them, turned on by its DescriptorRelay once the relay reads the socket: not
        // here, where a connection may still be parked or refused at a limit and then closed unread, its queued
        // descriptors (a lingering socket) dropped by that close on this thread or an event loop (a review: a parked
        // peer's lingering TCP sockets held both event loops for their linger time). Turned off here on an inherited
        // socket, for a connection made before the server turned its setting off; on a socket of its own that needs
        // no call.
        if !listenerRefusesDescriptors {
            setDescriptorPassing(false, on: descriptor)
            // What such a peer passed before is refused with its connection, closed on a closing thread.
            if let refusal = QueuedDescriptors.refuse(descriptor, passedBy: PassedDescriptorCloser.account(ofPeer: peer?.userID)) {
                self.refuseForQueuedDescriptors(refusal, id: id, peer: peer)
                return
            }
        }
        if !decision.isAllowed {
            self.metrics.unauthorized.increment()
            var metadata = Self.metadata(id, peer)
            metadata["socketipc.reason"] = "\(decision.reason)"
            self.refusalLogger.log(level: .notice, "refusing connection: authorization policy", metadata: metadata)
        }
        // A user with too many closes of descriptors it passed waiting, none of which ends (a file system it serves
        // that never answers a flush), passes no more until they come down: each is an open descriptor of this
        // process's.
        if decision.isAllowed, self.initializer.maximumDescriptorsPerMessage > 0,
            PassedDescriptorCloser.isStalled(peer?.userID)
        {
            self.refuseForWaitingCloses(descriptor, id: id, peer: peer)
            return
        }
        // The handshake time counts from now, also for a connection that first waits for a handshake slot.
        let handshakeDeadline = NIODeadline.now() + .init(self.configuration.handshakeTimeout)
        let action = self.state.withLock {
            $0.machine.connectionAccepted(
                id,
                descriptor: descriptor,
                peer: peer,
                authorized: decision.isAllowed,
                handshakeDeadline: handshakeDeadline
            )
        }
        switch action {
        case .serve:
            self.metrics.accepted.increment()
            self.metrics.active.increment()
            self.serve(descriptor, id: id, peer: peer, handshakeDeadline: handshakeDeadline)
        case .refuseUnauthorized:
            // A refused framed peer is told why on a channel that lingers for a moment: it counts against the
            // limits like any connection, but never as a pending handshake.
            self.metrics.accepted.increment()
            self.metrics.active.increment()
            self.reportRefusal(of: peer, SocketIPCError(.unauthorized, Self.unauthorizedText(decision, peer)))
            self.refuseUnauthorized(descriptor, id: id, peer: peer)
        case .park:
            self.metrics.accepted.increment()
            self.metrics.active.increment()
            // A connection still parked when its handshake time is up is closed unserved.
            MultiThreadedEventLoopGroup.singleton.any().scheduleTask(deadline: handshakeDeadline) {
                self.parkedHandshakeExpired(id)
            }
        case .refuse(let refusal):
            self.metrics.refused.increment()
            self.refusalLogger.log(level: .notice, "refusing connection: \(refusal)", metadata: Self.metadata(id, peer))
            close(descriptor)
            if case .limit(let limit) = refusal {
                // A peer the policy refused too is reported as unauthorized: more connections would not admit it.
                self.reportRefusal(
                    of: peer,
                    decision.isAllowed
                        ? SocketIPCError(.resourceExhausted, "refused the connection: \(limit)")
                        : SocketIPCError(.unauthorized, Self.unauthorizedText(decision, peer))
                )
            }
        }
    }

    /// Serves an admitted connection, whose peer has `peer`'s credentials (as read at accept): on this thread if the
    /// style can, else on a channel.
    func serve(_ descriptor: Int32, id: UInt64, peer: PeerCredentials?, handshakeDeadline: NIODeadline) {
        var initialBytes: ByteBuffer?
        switch self.initializer.serveOnAcceptingThread(descriptor, id: id, peer: peer, logger: self.logger) {
        case .served:
            self.connectionClosed(id)
            return
        case .handOff(let bytes):
            initialBytes = bytes.readableBytes > 0 ? bytes : nil
        case nil:
            break
        }
        let handedOffBytes = initialBytes
        var relay: DescriptorRelay?
        let maximumDescriptors = self.initializer.maximumDescriptorsPerMessage
        if maximumDescriptors > 0 {
            self.configuration.connection.applySocketOptions(toDescriptor: descriptor)
            do {
                var relayLogger = self.logger
                for (key, value) in Self.metadata(id, peer) { relayLogger[metadataKey: key] = value }
                relay = try DescriptorRelay(
                    socket: descriptor,
                    maximumPerMessage: maximumDescriptors,
                    passedBy: PassedDescriptorCloser.account(ofPeer: peer?.userID),
                    logger: relayLogger,
                    lingersWhilePeerHoldsSharedMemory: true
                )
            } catch {
                self.logger.error("could not relay a connection that passes descriptors", metadata: ["error": "\(errorText(error))"])
                self.connectionClosed(id)
                return
            }
        }
        let descriptorRelay = relay
        if let relay { self.relays.withLock { $0[id] = relay } }
        let channelDescriptor = relay?.channelSide ?? descriptor
        let slot = ConnectionSlot(released: { self.connectionClosed(id) })
        // The closures below capture `served` alone, so that none allocates a context of its own.
        let served = ServedConnection(server: self, id: id, relay: descriptorRelay, slot: slot)
        let lifecycle = ConnectionLifecycle(
            handshakeDeadline: handshakeDeadline,
            handshakeCompleted: { _ in served.server.handshakeCompleted(served.id) },
            opened: { connection in served.server.connectionOpened(served.id, connection: connection) },
            closed: { connection, error in
                if let error { served.server.connectionFailed(error, id: served.id, peer: connection.peer) }
            },
            handlerTaskOwner: .server(self.handlerTasks),
            slot: slot,
            userCalls: self.userCalls.account(for: peer?.userID),
            incomingBytes: IncomingBytesCharge(accounts: self.incomingBytes, user: peer?.userID)
        )
        // Set up in an event loop's I/O turn, not as a task that would run before the loop's sockets (see
        // ChannelSetupQueue).
        ChannelSetupQueue.shared.enqueue { eventLoop in
            ClientBootstrap(group: eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: self.initializer.allowsRemoteHalfClosure)
                .channelOption(.recvAllocator, value: ConnectionOptions.receiveAllocator)
                .channelOption(.writeBufferWaterMark, value: ConnectionOptions.channelWriteWatermark)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let action = self.state.withLock { $0.machine.channelInitialized(id, channel: channel) }
                        channel.closeFuture.whenComplete { _ in served.channelClosed() }
                        try self.initializer.initialize(
                            AcceptedConnection(
                                channel: channel,
                                id: id,
                                descriptor: channelDescriptor,
                                descriptorRelay: descriptorRelay,
                                peer: peer,
                                initialBytes: handedOffBytes,
                                lifecycle: lifecycle,
                                logger: self.logger
                            )
                        )
                        // A forced shutdown closed the server's channels while this one was being made.
                        if action == .close { channel.eventLoop.execute { channel.close(promise: nil) } }
                    }
                }
                .withConnectedSocket(channelDescriptor)
                .whenFailure { error in
                    descriptorRelay?.abort()
                    _ = self.relays.withLock { $0.removeValue(forKey: id) }
                    self.logger.error("could not set up an accepted connection", metadata: ["error": "\(errorText(error))"])
                    self.connectionClosed(id)
                }
        }
    }

    /// A framed connection opened: a shutdown that began while it was being set up tells it so.
    func connectionOpened(_ id: UInt64, connection: Connection) {
        if self.state.withLock({ $0.machine.connectionOpened(id, connection: connection) }) == .goAway {
            connection.goAway(.normal, message: "the server is shutting down")
        }
    }

    /// A framed connection's peer sent its hello: it no longer counts as a pending handshake, and a parked
    /// connection of the same user may be served. (An EOF-style connection counts as one until it closes, which it
    /// does once its message is handled.)
    func handshakeCompleted(_ id: UInt64) {
        let parked = self.state.withLock { $0.machine.handshakeCompleted(id, now: .now()) }
        self.handOff(parked)
    }

    /// Serves the parked connection handed a handshake slot, and closes unserved those whose handshake time ran out
    /// while they waited.
    func handOff(_ parked: StateMachine.ParkedHandOff) {
        for expired in parked.expired {
            self.closeUnserved(expired)
            self.metrics.active.decrement()
        }
        if let next = parked.serve {
            self.serve(next.descriptor, id: next.id, peer: next.peer, handshakeDeadline: next.handshakeDeadline)
        }
    }

    /// Closes a connection that is still parked when its handshake time is up.
    private func parkedHandshakeExpired(_ id: UInt64) {
        guard case .closeUnserved(let parked) = self.state.withLock({ $0.machine.parkedHandshakeExpired(id) }) else {
            return
        }
        self.closeUnserved(parked)
        self.metrics.active.decrement()
    }

    /// Closes a parked connection whose handshake time is up, unserved.
    private func closeUnserved(_ parked: StateMachine.Parked) {
        close(parked.descriptor)
        self.connectionFailed(
            SocketIPCError(.timedOut, "the connection's handshake time ran out while it waited for a handshake slot"),
            id: parked.id,
            peer: parked.peer
        )
    }

    /// Counts a connection closed by an error, and logs it at `notice`, at a bounded rate.
    func connectionFailed(_ error: SocketIPCError, id: UInt64, peer: PeerCredentials?) {
        self.metrics.connectionFailed(error)
        var metadata = Self.metadata(id, peer)
        metadata["error"] = "\(errorText(error))"
        self.refusalLogger.log(level: .notice, "closing connection: \(error.code)", metadata: metadata)
    }

    /// Refuses a peer the authorization policy refused: an EOF-style one is closed before anything is read; a
    /// framed one is told why (hello and going-away `unauthorized`) on an event loop, and then closed.
    private func refuseUnauthorized(_ descriptor: Int32, id: UInt64, peer: PeerCredentials?) {
        guard self.initializer.explainsRefusals else {
            close(descriptor)
            self.connectionClosed(id)
            return
        }
        let text = "the server's authorization policy refused this peer (\(peer.map { "\($0)" } ?? "credentials unknown"))"
        let lingerTime = self.configuration.connection.goAwayLingerTime
        ChannelSetupQueue.shared.enqueue { eventLoop in
            ClientBootstrap(group: eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        channel.closeFuture.whenComplete { _ in self.connectionClosed(id) }
                        try channel.pipeline.syncOperations.addHandler(RefusalChannelHandler(text: text, lingerTime: lingerTime))
                    }
                }
                .withConnectedSocket(descriptor)
                .whenFailure { _ in self.connectionClosed(id) }
        }
    }

    /// Refuses, closing it at once, a connection that would pass descriptors from a user with
    /// ``PassedDescriptorCloser/maximumWaitingPerUser`` or more closes of descriptors it passed waiting, none of which
    /// ended for ``PassedDescriptorCloser/stallTime``.
    private func refuseForWaitingCloses(_ descriptor: Int32, id: UInt64, peer: PeerCredentials?) {
        let waiting = PassedDescriptorCloser.waiting(by: peer?.userID)
        self.metrics.refused.increment()
        var metadata = Self.metadata(id, peer)
        metadata["socketipc.closes_waiting"] = "\(waiting)"
        self.refusalLogger.log(
            level: .notice,
            "refusing connection: closes of descriptors the peer's user passed are waiting",
            metadata: metadata
        )
        close(descriptor)
        self.reportRefusal(
            of: peer,
            SocketIPCError(
                .resourceExhausted,
                "refused the connection: \(waiting) closes of descriptors that the peer's user passed are waiting, "
                    + "and none ended for \(PassedDescriptorCloser.stallTime) (at most "
                    + "\(PassedDescriptorCloser.maximumWaitingPerUser) may wait; a file system that does not answer?)"
            )
        )
    }

    /// Counts, logs and reports a connection of an inherited listening socket refused for what its peer queued
    /// before the server's hello (``QueuedDescriptors``); its socket is the closer's already.
    private func refuseForQueuedDescriptors(_ refusal: QueuedDescriptors.Refusal, id: UInt64, peer: PeerCredentials?) {
        let what =
            refusal == .passedDescriptors
            ? "the peer passed descriptors before the server's hello"
            : "what the peer sent before the server's hello cannot be looked at whole (out-of-band data, bytes of "
                + "more than one process, or more than \(QueuedDescriptors.maximumLookedAt) bytes)"
        self.metrics.refused.increment()
        self.refusalLogger.log(level: .notice, "refusing connection: \(what)", metadata: Self.metadata(id, peer))
        self.reportRefusal(
            of: peer,
            SocketIPCError(
                .protocolViolation,
                "refused the connection: \(what) (it connected to the inherited listening socket before the server "
                    + "started)"
            )
        )
    }

    /// Calls ``ServerConfiguration/onConnectionRefused``, if set.
    private func reportRefusal(of peer: PeerCredentials?, _ error: SocketIPCError) {
        self.configuration.onConnectionRefused?(peer, error)
    }

    /// The message of the error that reports a peer the authorization policy refused.
    private static func unauthorizedText(_ decision: AuthorizationPolicy.Decision, _ peer: PeerCredentials?) -> String {
        let peer = peer.map { "\($0)" } ?? "credentials unknown"
        return "the authorization policy refused the peer (\(peer)): \(decision.reason)"
    }

    private static func metadata(_ id: UInt64, _ peer: PeerCredentials?) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["socketipc.connection": "\(id)"]
        if let peer {
            metadata["socketipc.peer.uid"] = "\(peer.userID)"
            metadata["socketipc.peer.pid"] = "\(peer.processID)"
        } else {
            metadata["socketipc.peer"] = "unknown"
        }
        return metadata
    }
}

/// Process-wide connection numbers, for logs.
enum ConnectionIDs {
    private static let counter = Atomic<UInt64>(0)
    static func next() -> UInt64 { self.counter.wrappingAdd(1, ordering: .relaxed).newValue }
}
