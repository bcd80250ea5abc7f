import NIOCore
import SocketIPCCore
import Synchronization

// The frames of the peer for one call, on the event loop: messages (held to the method's limit and the windows),
// credit, the peer's end and cancel.
extension CallStream {
    /// Takes a frame of this call; returns a protocol violation, if it is one.
    func receive(_ frame: CallFrame, descriptors: ReceivedDescriptors? = nil) -> SocketIPCError? {
        switch frame {
        case .message(let message) where message.readableBytes > self.maximumRequestSize && self.takesMessages:
            // Above the method's own limit: the call ends and the message is dropped (its descriptors closed), not
            // the connection; the caller did not break the protocol, it does not know the limit.
            self.refuseTooLarge(size: message.readableBytes)
        case .message(let message):
            var credit = 0
            var tooMany = false
            var beyondWindow = false
            /// The cost credit was given for after the peer's call-blocked frame, if any: its next message must cost
            /// that, and another is refused as such, not as a message beyond credit (found by a review).
            var grantedCost: Int?
            /// What the message costs in credit (its descriptors too, when they cost credit).
            var cost = 0
            let limit = descriptors == nil ? 0 : self.connection.maximumDescriptorsHeld
            var delivered: ReceivedDescriptors?
            let action = self.state.withLock { state -> Machine.ReceiveAction in
                // Counted (and its descriptors kept) under the call's lock, before the reader can see the message,
                // and only if the call keeps it: a message dropped (after the peer's end, or a failure) takes its
                // descriptors with it (closed as `descriptors` is released).
                if state.machine.acceptsMessages {
                    state.descriptors.received += 1
                    if let descriptors {
                        state.descriptors.waiting.append((state.descriptors.received, descriptors))
                        state.descriptors.held += descriptors.count
                        tooMany = state.descriptors.held > limit
                    }
                }
                if tooMany { return .violation }
                grantedCost = state.machine.grantedBlockedCost
                cost = state.machine.cost(payloadLength: message.readableBytes, descriptors: descriptors?.count ?? 0)
                let action = state.machine.messageReceived(message, descriptors: descriptors?.count ?? 0)
                switch action {
                case .deliver:
                    credit = state.machine.delivered(message)
                    delivered = state.takeNextDescriptors(credit: &credit)
                case .none:
                    // Held beyond the call's window (a version 1 peer of calls sent it beyond its credit): counted
                    // across the connection's calls below.
                    beyondWindow = state.machine.heldBeyondWindow > 0
                case .end, .violation:
                    break
                }
                return action
            }
            if tooMany {
                return SocketIPCError(
                    .protocolViolation,
                    "the peer passed more than \(limit) descriptors on call \(self.id) that its reader has not taken"
                )
            }
            switch action {
            case .none, .end: break
            case .deliver(let waiter, let message):
                waiter.resume(returning: .message(message, descriptors: delivered))
            case .violation:
                if let grantedCost, grantedCost != cost {
                    return SocketIPCError(
                        .protocolViolation,
                        "the peer sent a message of call \(self.id) that costs \(cost) bytes of credit, after it was "
                            + "given credit for the one of \(grantedCost) bytes its call-blocked frame announced "
                            + "(PROTOCOL.md, 0x0F)"
                    )
                }
                return SocketIPCError(
                    .protocolViolation,
                    "the peer sent a message of call \(self.id) beyond the credit it was given"
                )
            }
            self.grant(credit)
            if beyondWindow, let exhausted = CallMultiplexer.of(self.connection).checkHeldBeyondWindows(on: self.connection) {
                self.refuseHeld(exhausted, reason: .heldBeyondWindows)
            } else if !self.isCaller, delivered == nil, descriptors != nil,
                let exhausted = CallMultiplexer.of(self.connection).checkHeldDescriptors(on: self.connection)
            {
                self.refuseHeld(exhausted, reason: .heldTooManyDescriptors)
            }
        case .end(let status):
            // A caller's end keeps only its code (see endReceived): its details would be held for the call's life.
            let fromCaller = !self.isCaller
            if case .end(let waiter, let status) = self.state.withLock({
                $0.machine.endReceived(status, fromCaller: fromCaller)
            }) {
                waiter.resume(returning: .end(status))
            }
            // On the caller's side the handler's end ends the whole call: what the caller still sends has no
            // reader, and no credit comes for it (gRPC: a client's sends fail once the server has sent its status).
            if self.isCaller {
                let method = self.method
                // A status that says why (the server going away, an unknown method) is the sends' error too, so that
                // a caller can tell "try the next server" from "this call is over".
                let because = status.error(codec: JSONCodec(), method: method) as? SocketIPCError
                var parkedWaiter: UnsafeContinuation<Void, Never>?
                let refused = self.state.withLock { state in
                    let refused = state.machine.refuseSends {
                        because
                            ?? SocketIPCError(
                                .invalidState,
                                "the call '\(method)' was ended by its handler (status \(status.code)) while this side was still sending"
                            )
                    }
                    // A parked message no longer goes: the handler has ended the call.
                    if refused != nil { parkedWaiter = state.dropParked() }
                    return refused
                }
                if let refused, let waiter = refused.waiter { waiter.resume(throwing: refused.error) }
                parkedWaiter?.resume()
            }
        case .blocked(let cost) where Int(cost) > self.maximumRequestCost && self.takesMessages:
            // Asked for credit for a request above the method's limit: refused before a byte of it is sent.
            self.refuseTooLarge(size: Int(cost) - Machine.frameCost(payloadLength: 0))
        case .blocked(let cost):
            let maximumCost =
                Machine.frameCost(payloadLength: self.connection.maximumMessageSize)
                + self.connection.maximumDescriptorCreditCost
            switch self.state.withLock({ $0.machine.blockedReceived(cost: Int(cost), maximumCost: maximumCost) }) {
            case .none: break
            case .grant(let credit): self.grant(credit)
            case .violation:
                return SocketIPCError(
                    .protocolViolation,
                    "the peer is blocked on a message of call \(self.id) that costs \(cost) bytes of credit, more than "
                        + "a message of the maximum size (\(self.connection.maximumMessageSize) bytes) costs"
                )
            }
        case .credit(let increment):
            var parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?
            let action = self.state.withLock { locked in
                let action = locked.machine.creditReceived(increment)
                if case .sendParked = action { parked = locked.parked.take() }
                return action
            }
            switch action {
            case .none: break
            case .resume(let waiter): waiter.resume(returning: .send)
            case .retry(let waiter): waiter.resume(returning: .retry)
            case .sendParked: self.sendParked(parked)
            case .violation:
                return SocketIPCError(
                    .protocolViolation,
                    "the peer's credit for call \(self.id) would take its window above \(Machine.maximumWindow) bytes"
                )
            }
        case .cancel(let reason):
            guard !self.isCaller else { return nil }
            // The caller gave the call up, whether its deadline passed or its task was cancelled: the handler sees
            // which, and nothing more is sent for the call (PROTOCOL.md: after a cancel the handler's side sends
            // nothing), as the caller no longer listens.
            self.stopHandler(
                .cancelledByCaller,
                failing: reason == .deadlineExceeded ? Self.deadlineError(self.method) : CancellationError()
            )
        case .open:
            return SocketIPCError(.protocolViolation, "the peer opened call \(self.id), which is already open")
        }
        return nil
    }

    /// This call's message tipped what the connection's calls hold unread over its bound (messages beyond their
    /// windows, or descriptors): the call ends, and what it holds is dropped, not the connection. A handler's call
    /// ends with status `resourceExhausted` (`0x08`, as beyond the concurrency limit), as `reason` says; a caller's is
    /// cancelled, and fails with `error`.
    private func refuseHeld(_ error: SocketIPCError, reason: StopReason) {
        if self.isCaller {
            let wasOpen = self.state.withLock { $0.machine.failure == nil }
            self.fail(error)
            if wasOpen { self.connection.queueCallControlFrame(id: self.id, .cancel(.cancelled)) }
        } else {
            self.stopHandler(reason, failing: error)
        }
    }

    /// Whether a message arriving now would be taken: the call has not failed, the peer has not ended its direction,
    /// and the reader still reads (a unary handler reads one request). A message that would not is dropped as it
    /// arrives, whatever its size: only one that would be taken is held to ``maximumRequestSize`` (found by a
    /// review: a late second request above the limit ended a call whose handler had run, or had answered already).
    private var takesMessages: Bool {
        self.state.withLock { $0.machine.takesMessages }
    }

    /// Whether a message of `size` bytes, come as a shared payload, is worth mapping and copying: the call takes
    /// messages, and this one is within ``maximumRequestSize`` (one above it refuses the call now, as one through the
    /// socket would).
    func takesMessage(ofSize size: Int) -> Bool {
        guard self.takesMessages else { return false }
        guard size <= self.maximumRequestSize else {
            self.refuseTooLarge(size: size)
            return false
        }
        return true
    }

    /// The peer sent, or asked for credit for, a request of `size` bytes above ``maximumRequestSize``: the handler
    /// is stopped, and the call ends with status `invalidMessage`; what the call holds is dropped. Unless the call is
    /// stopping already (its handler finished, and its last message may wait for credit): the message is dropped.
    private func refuseTooLarge(size: Int) {
        let limit = self.maximumRequestSize
        self.stopHandler(
            .requestTooLarge(size: size, limit: limit),
            failing: SocketIPCError(.invalidMessage, Self.requestTooLargeText(size, limit, self.method)),
            unlessStopped: true
        )
    }

    /// Why a call was ended for a request above its method's limit.
    static func requestTooLargeText(_ size: Int, _ limit: Int, _ method: String) -> String {
        "a request of \(size) bytes is larger than '\(method)' takes (\(limit) bytes)"
    }
}
