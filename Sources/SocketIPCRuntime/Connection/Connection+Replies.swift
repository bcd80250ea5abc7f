import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

// Answering the peer's requests (for `Reply`), and going away.
extension Connection {
    /// Answers the peer's request `id` with `payload`, or with an error reply if `payload` exceeds
    /// ``ConnectionOptions/maximumMessageSize``. Does nothing once the connection is closed.
    func sendReply(id: UInt32, ticket: ReplyTicket, payload: ByteBuffer) {
        self.sendReply(id: id, ticket: ticket, payload: payload, descriptors: [])
    }

    /// Answers the peer's request `id` with `payload` and the descriptors of `group` (owned by the connection from
    /// now on), or with an error reply if `payload` exceeds ``ConnectionOptions/maximumMessageSize``. Does nothing
    /// once the connection is closed. `reservation`: the room taken for them (``DescriptorRelay/admitOutgoing(_:)``).
    func sendReply(
        id: UInt32,
        ticket: ReplyTicket,
        payload: ByteBuffer,
        descriptors group: [Int32],
        reservation: OutgoingDescriptorReservation? = nil
    ) {
        if payload.readableBytes > self.options.effectiveMaximumMessageSize {
            let message = "the reply of \(payload.readableBytes) bytes exceeds the maximum of \(self.options.effectiveMaximumMessageSize)"
            DescriptorRelay.closeAll(group)
            self.sendErrorReply(id: id, ticket: ticket, message: message)
            return
        }
        self.answer(.reply, id: id, ticket: ticket, payload: payload, descriptors: group, reservation: reservation)
    }

    /// Answers the peer's request `id` with an error reply saying `message`, cut to fit
    /// ``ConnectionOptions/maximumMessageSize`` (a peer refuses a larger frame by closing the connection, which would
    /// fail its other requests too; found by a review). Does nothing once the connection is closed.
    func sendErrorReply(id: UInt32, ticket: ReplyTicket, message: String) {
        let text = Self.fitting(message, within: self.options.effectiveMaximumMessageSize)
        self.answer(.errorReply, id: id, ticket: ticket, payload: ByteBuffer(string: text))
    }

    /// `message`, or its start and a note of how long it was, in at most `limit` bytes of UTF-8.
    static func fitting(_ message: String, within limit: Int) -> String {
        let length = message.utf8.count
        guard length > limit else { return message }
        let note = "… (\(length) bytes, cut to the maximum message size)"
        guard limit > note.utf8.count else { return message.prefix(utf8Bytes: limit) }
        return message.prefix(utf8Bytes: limit - note.utf8.count) + note
    }

    /// Queues the answer and counts the request answered, in one lock; then flushes, lets the channel handler read
    /// again, or closes, as the answer asks.
    @inline(__always)
    private func answer(
        _ kind: FrameKind,
        id: UInt32,
        ticket: ReplyTicket,
        payload: ByteBuffer,
        descriptors: [Int32] = [],
        reservation: OutgoingDescriptorReservation? = nil
    ) {
        var group = descriptors
        var sharedPayload = false
        if group.isEmpty, kind == .reply, self.descriptorPassing != nil, let memory = self.sharedMemory(for: payload) {
            group = [memory]
            sharedPayload = true
        }
        let action: StateMachine.AnswerAction
        if group.isEmpty {
            action = self.state.withLock {
                $0.answer(kind, id: id, ticket: ticket, payload: payload, spareBuffer: { self.spareBuffer() })
            }
        } else {
            let relay = self.descriptorPassing?.relay
            var registered = false
            action = self.state.withLock {
                $0.answer(
                    kind, id: id, ticket: ticket, payload: payload, spareBuffer: { self.spareBuffer() },
                    passing: group.count,
                    registerDescriptors: {
                        relay?.registerOutgoing(group, reservation: reservation)
                        registered = true
                    },
                    sharedPayloadLength: sharedPayload ? payload.readableBytes : nil
                )
            }
            if !registered { DescriptorRelay.closeAll(group) }
        }
        if action.scheduleFlush { self.scheduleFlush() }
        if action.resumeReading { self.resumeReading() }
        if action.answered, let requests = self.calls.userCalls?.requests { requests.ended() }
        if action.close { self.closeAfterGoingAway() }
    }

    /// Tells the channel handler, on the event loop, that it may read again.
    @inline(never)
    func resumeReading() {
        let channel = self.channel
        self.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(ReadingMayResume()) }
    }

    /// Queues a frame of `kind` whose payload of `length` bytes travels in the shared memory `memory` (owned by the
    /// connection from now on): a descriptors frame passing it, then a shared-payload frame. Returns whether the
    /// sender must wait.
    func queueShared(_ kind: FrameKind, id: UInt32, length: Int, memory: Int32) throws -> Bool {
        let relay = self.descriptorPassing?.relay
        var registered = false
        let action = self.state.withLock {
            $0.enqueue(
                kind, id: id, payload: ByteBuffer(), spareBuffer: { self.spareBuffer() }, passing: 1,
                registerDescriptors: {
                    relay?.registerOutgoing([memory])
                    registered = true
                },
                sharedPayloadLength: length
            )
        }
        if !registered { DescriptorRelay.closeAll([memory]) }
        switch action {
        case .fail(let error):
            throw error
        case .queued(let scheduleFlush, let mustWait):
            if scheduleFlush { self.scheduleFlush() }
            return mustWait
        }
    }

    // MARK: - Going away

    /// Tells the peer this side is going away, and closes once every request the peer made is answered and every
    /// request this side made has its reply (or has failed: timed out, cancelled). New requests are refused.
    func goAway(_ reason: GoAwayReason, message: String) {
        var frame = ByteBuffer()
        frame.writeFrame(.goAway(reason, message: message))
        let (action, announced) = self.state.withLock { state in
            let before = state.isGoingAway || !state.isOpen
            return (state.goAway(frame: frame), !before)
        }
        // The services layer ends the calls it would otherwise keep open (response streams) before the drain.
        if announced, reason == .normal { self.callsGoingAway() }
        switch action {
        case .none: break
        case .scheduleFlush: self.scheduleFlush()
        case .close: self.closeAfterGoingAway()
        }
    }

    /// Flushes and closes, on the event loop: a connection that went away has nothing left to wait for.
    func closeAfterGoingAway() {
        // This side closes: a peer's end-of-stream read before the close below is not the peer's doing.
        self.calls.closedLocally.store(true, ordering: .relaxed)
        self.eventLoop.execute {
            self.flushPendingWrites(force: true)
            self.close()
        }
    }
}
