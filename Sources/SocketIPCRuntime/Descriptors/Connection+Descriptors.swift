import NIOCore
import SocketIPCCore
import SystemPackage
import Synchronization

// Passing file descriptors (SCM_RIGHTS) with messages, requests and replies. PROTOCOL.md, "Passing descriptors".
extension Connection {
    /// Whether descriptors can travel on this connection: this side's
    /// ``ConnectionOptions/maximumDescriptorsPerMessage`` is above 0 and the peer's hello said it passes them too.
    /// Known once the handshake is complete (a client's connection always is; a server's, after the peer's hello).
    public var passesDescriptors: Bool {
        self.descriptorPassing != nil
            && HelloFlags(rawValue: self.calls.peerFlags.load(ordering: .relaxed)).contains(.descriptors)
    }

    /// Sends a one-way message with file descriptors; the peer's handler gets them in
    /// ``ConnectionHandler/didReceiveMessage(_:descriptors:on:)``.
    ///
    /// The descriptors are duplicated before this returns, so the caller keeps its own and may close them at once;
    /// the duplicates travel with the message (the kernel gives the peer new descriptors of the same open files)
    /// and are closed once sent, or when the connection closes first.
    /// - Parameters:
    ///   - message: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``.
    ///   - descriptors: 1 to ``ConnectionOptions/maximumDescriptorsPerMessage`` open descriptors.
    /// - Throws: `SocketIPCError` with code `invalidState` when descriptors cannot travel on this connection
    ///   (``passesDescriptors``), `invalidConfiguration` for too many or none, `systemCall` when one is not open,
    ///   `messageTooLarge`, `CancellationError`, or `connectionClosed` once the connection is closed. While 1,024
    ///   descriptors wait to be sent on the connection (4,096 across the connections of the peer's user), it waits
    ///   for the peer to read some, as it waits for the write watermark, and as D-Bus bounds
    ///   `max_outgoing_unix_fds`; senders on one connection go in the order they came.
    nonisolated(nonsending) public func send(_ message: ByteBuffer, descriptors: [SystemPackage.FileDescriptor]) async throws {
        // Room among the descriptors queued to send first, counted before they are duplicated: a message weighs its
        // bytes against the write watermark, and its descriptors here (found by a review: a sender to a slow reader
        // was closed past the bound instead).
        var reservation: OutgoingDescriptorReservation?
        if let passing = self.descriptorPassing, self.passesDescriptors, !descriptors.isEmpty {
            reservation = try await passing.relay.reserveOutgoing(descriptors.count)
        }
        if try self.queueMessage(message, descriptors: descriptors, reservation: reservation) {
            try await self.waitUntilWritable()
        }
    }

    /// Queues a one-way message with descriptors as ``send(_:descriptors:)`` does, without waiting for room: returns
    /// whether the queue is above its high watermark (the sender should wait).
    /// - Throws: What ``send(_:descriptors:)`` throws, but `CancellationError`.
    /// - Parameter reservation: Room for the descriptors, taken by a sender that waited for it; without one, room is
    ///   taken as for a reply, which cannot wait.
    package func queueMessage(
        _ message: ByteBuffer,
        descriptors: [SystemPackage.FileDescriptor],
        reservation: OutgoingDescriptorReservation? = nil
    ) throws -> Bool {
        let (passing, group, reservation) = try self.prepare(
            descriptors, payload: message, what: "message", reservation: reservation
        )
        var registered = false
        let action = self.state.withLock {
            $0.enqueue(
                .message, id: 0, payload: message, spareBuffer: { self.spareBuffer() }, passing: group.count,
                registerDescriptors: {
                    passing.relay.registerOutgoing(group, reservation: reservation)
                    registered = true
                }
            )
        }
        if !registered { DescriptorRelay.closeAll(group) }
        switch action {
        case .fail(let error):
            throw error
        case .queued(let scheduleFlush, let mustWait):
            if scheduleFlush { self.scheduleFlush() }
            return mustWait
        }
    }

    /// Sends a request with file descriptors (none with an empty array) and waits for its reply and the descriptors
    /// the reply carries; the peer's handler gets them in
    /// ``ConnectionHandler/didReceiveRequest(_:descriptors:reply:on:)`` and answers with ``Reply/succeed(_:descriptors:)``.
    ///
    /// As ``request(_:timeout:)`` otherwise; the descriptors are duplicated as ``send(_:descriptors:)`` does.
    /// - Returns: The reply's payload, and the descriptors it carried (none when the peer passed none), which the
    ///   caller owns.
    /// - Throws: What ``request(_:timeout:)`` and ``send(_:descriptors:)`` throw.
    nonisolated(nonsending) public func request(
        _ request: ByteBuffer,
        descriptors: [SystemPackage.FileDescriptor],
        timeout: Duration? = nil
    ) async throws -> (payload: ByteBuffer, descriptors: ReceivedDescriptors) {
        let (passing, group, reservation): (DescriptorPassing, [Int32], OutgoingDescriptorReservation?)
        if descriptors.isEmpty {
            guard let existing = self.descriptorPassing, self.passesDescriptors else {
                throw Self.cannotPass()
            }
            (passing, group, reservation) = (existing, [], nil)
        } else {
            // Room among the descriptors queued to send, as ``send(_:descriptors:)`` waits for it.
            guard let existing = self.descriptorPassing, self.passesDescriptors else { throw Self.cannotPass() }
            let room = try await existing.relay.reserveOutgoing(descriptors.count)
            (passing, group, reservation) = try self.prepare(
                descriptors, payload: request, what: "request", reservation: room
            )
        }
        let id: UInt32
        let left: Duration?
        do {
            left = try await self.waitUntilWritable(within: timeout ?? self.options.requestTimeout)
            id = try self.nextRequestID()
        } catch {
            DescriptorRelay.closeAll(group)
            throw error
        }
        passing.expectReply(id)
        do {
            let payload = try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<ByteBuffer, any Error>) in
                    self.register(
                        continuation, id: id, payload: request, timeout: left, descriptors: group,
                        reservation: reservation
                    )
                }
            } onCancel: {
                self.finishRequest(id, with: .failure(CancellationError()))
            }
            return (payload, passing.takeReply(id))
        } catch {
            passing.takeReply(id).close()
            throw error
        }
    }

    /// Checks that `descriptors` may travel with `payload`, takes room for them (`reservation`, or as a reply does),
    /// and duplicates them.
    private func prepare(
        _ descriptors: [SystemPackage.FileDescriptor],
        payload: ByteBuffer,
        what: String,
        reservation: OutgoingDescriptorReservation?
    ) throws -> (DescriptorPassing, [Int32], OutgoingDescriptorReservation) {
        guard let passing = self.descriptorPassing, self.passesDescriptors else { throw Self.cannotPass() }
        guard payload.readableBytes <= self.options.effectiveMaximumMessageSize else {
            throw SocketIPCError(
                .messageTooLarge,
                "the \(what) of \(payload.readableBytes) bytes exceeds the maximum of "
                    + "\(self.options.effectiveMaximumMessageSize) bytes (ConnectionOptions.maximumMessageSize)"
            )
        }
        let room = try reservation ?? passing.relay.admitOutgoing(descriptors.count).get()
        let group = try DescriptorPassing.duplicate(
            descriptors.map(\.rawValue),
            maximum: passing.relay.maximumPerMessage
        )
        return (passing, group, room)
    }

    /// Waits for room for `descriptors` among those queued to send on this connection, as ``send(_:descriptors:)``
    /// does, then duplicates them for a frame of this connection (the services layer's typed descriptors); the
    /// caller keeps `descriptors` open meanwhile.
    /// - Throws: `invalidState` when descriptors cannot travel here, `invalidConfiguration` for more than the
    ///   maximum, `systemCall` when one cannot be duplicated, `CancellationError`.
    nonisolated(nonsending) package func duplicateForPassing(
        _ descriptors: [Int32]
    ) async throws -> (descriptors: [Int32], reservation: OutgoingDescriptorReservation) {
        guard let passing = self.descriptorPassing, self.passesDescriptors else { throw Self.cannotPass() }
        let reservation = try await passing.relay.reserveOutgoing(descriptors.count)
        return (try DescriptorPassing.duplicate(descriptors, maximum: passing.relay.maximumPerMessage), reservation)
    }

    /// The most received descriptors one call may hold for its reader; 0 on a connection that passes none. When
    /// descriptors cost credit (``chargesDescriptorCredit``), what a sender within credit can make it hold
    /// (``CallStateMachine/descriptorsHeldWithinCredit(maximumPerMessage:)``); otherwise the relay's in-flight limit,
    /// which a version-1 sender cannot see (its credit counts bytes only).
    package var maximumDescriptorsHeld: Int {
        guard let passing = self.descriptorPassing else { return 0 }
        guard self.chargesDescriptorCredit else { return passing.relay.inFlightLimit }
        return CallStateMachine<Never, Never>.descriptorsHeldWithinCredit(maximumPerMessage: passing.relay.maximumPerMessage)
    }

    /// The most received descriptors the connection's calls may hold for their readers, across them: two calls' worth
    /// within descriptor credit, or one call's bound without it (the relay's in-flight limit), whichever is more; 0
    /// on a connection that passes none. Counted in the server's budget of descriptors per connection.
    package var maximumDescriptorsHeldByCalls: Int {
        guard let passing = self.descriptorPassing else { return 0 }
        return Self.maximumDescriptorsHeldByCalls(maximumPerMessage: passing.relay.maximumPerMessage)
    }

    /// ``maximumDescriptorsHeldByCalls`` for a connection that takes `maximumPerMessage` descriptors a message.
    static func maximumDescriptorsHeldByCalls(maximumPerMessage: Int) -> Int {
        max(
            DescriptorRelay.inFlightLimit(maximumPerMessage: maximumPerMessage),
            2 * CallStateMachine<Never, Never>.descriptorsHeldWithinCredit(maximumPerMessage: maximumPerMessage)
        )
    }

    /// Whether a call message's descriptors cost credit on this connection: both sides pass descriptors and speak
    /// calls, and both hellos set ``HelloFlags/descriptorCredit`` (this side's does whenever it passes descriptors).
    package var chargesDescriptorCredit: Bool {
        self.descriptorPassing != nil
            && HelloFlags(rawValue: self.calls.peerFlags.load(ordering: .relaxed)).contains([
                .calls, .descriptors, .descriptorCredit,
            ])
    }

    /// The most a call message's descriptors may add to its cost in credit here: those of the most descriptors this
    /// side takes in one message, when descriptors cost credit; 0 otherwise.
    package var maximumDescriptorCreditCost: Int {
        guard self.chargesDescriptorCredit, let passing = self.descriptorPassing else { return 0 }
        return passing.relay.maximumPerMessage * CallStateMachine<Never, Never>.descriptorCost
    }

    private static func cannotPass() -> SocketIPCError {
        SocketIPCError(
            .invalidState,
            "descriptors cannot travel on this connection: both sides must set "
                + "ConnectionOptions.maximumDescriptorsPerMessage (and the peer's hello must have arrived)"
        )
    }
}

extension Reply {
    /// Sends `payload` as the reply, with file descriptors; the requester gets them from
    /// `Connection.request(_:descriptors:timeout:)`. The descriptors are duplicated before this returns, so the
    /// caller keeps its own.
    ///
    /// When descriptors cannot travel (the peer's request came without ``Connection/passesDescriptors``), or one of
    /// `descriptors` cannot be duplicated, or there are more than ``ConnectionOptions/maximumDescriptorsPerMessage``,
    /// the requester gets an error reply saying so instead. So does a reply whose descriptors would take those
    /// waiting to be sent to the peer beyond 2,048 (8,192 across its user's connections): a reply cannot wait for
    /// the peer to read, as ``Connection/send(_:descriptors:)`` does, and the peer reads too slowly, or not at all
    /// (D-Bus bounds a connection's outgoing descriptors the same, `max_outgoing_unix_fds`).
    public func succeed(_ payload: ByteBuffer, descriptors: [SystemPackage.FileDescriptor]) {
        guard !descriptors.isEmpty else {
            self.succeed(payload)
            return
        }
        guard let passing = self.connection.descriptorPassing, self.connection.passesDescriptors else {
            self.fail(SocketIPCError(.invalidState, "the reply's descriptors cannot travel on this connection"))
            return
        }
        // A peer that reads none of its replies' descriptors gets an error reply instead once this side holds twice
        // its bound of them (DescriptorRelay.maximumOutgoing(maximumPerMessage:)); the connection stays open.
        let reservation: OutgoingDescriptorReservation
        switch passing.relay.admitOutgoing(descriptors.count) {
        case .success(let room): reservation = room
        case .failure(let refusal):
            self.fail(refusal)
            return
        }
        do {
            let group = try DescriptorPassing.duplicate(
                descriptors.map(\.rawValue),
                maximum: passing.relay.maximumPerMessage
            )
            self.connection.sendReply(
                id: self.id, ticket: self.ticket, payload: payload, descriptors: group, reservation: reservation
            )
        } catch {
            self.fail(error)
        }
    }
}
