import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

// What sending and answering share: size checks, the write queue's flushes, request timeouts.
extension Connection {
    @inline(__always)
    func checkSize(_ payload: ByteBuffer, what: StaticString) throws {
        guard payload.readableBytes <= self.options.effectiveMaximumMessageSize else {
            throw self.tooLarge(payload.readableBytes, what: what)
        }
    }

    @inline(never)
    private func tooLarge(_ size: Int, what: StaticString) -> SocketIPCError {
        SocketIPCError(
            .messageTooLarge,
            "the \(what) of \(size) bytes exceeds the maximum of \(self.options.effectiveMaximumMessageSize) bytes "
                + "(ConnectionOptions.maximumMessageSize)"
        )
    }

    /// The id of this side's next request: 1, 2, 3, ..., `0xFFFFFFFF`, then 0. No id is used twice on a connection,
    /// as no HTTP/2 stream id is (RFC 9113, section 5.1.1): a request this side gave up (it timed out, or its task was
    /// cancelled) may still be answered by the peer, however late, and that answer must not reach a new request.
    /// - Throws: `connectionClosed` once all 2^32 are used: the connection then goes away (`0x00`: requests in flight
    ///   get their replies, then it closes), and requests are sent on a new connection.
    func nextRequestID() throws -> UInt32 {
        let count = self.requestIDs.wrappingAdd(1, ordering: .relaxed).newValue
        guard count <= 1 << 32 else {
            self.goAway(.normal, message: "this side has sent all the requests a connection can number")
            throw SocketIPCError(
                .connectionClosed,
                "the connection has sent all the 2^32 requests this side can number (PROTOCOL.md, \"Requests, replies "
                    + "and ids\"), and is going away: send the request on a new connection"
            )
        }
        return UInt32(truncatingIfNeeded: count)
    }

    /// The event loop's spare coalescing buffer, which may be taken only on the event loop.
    @inline(__always)
    func spareBuffer() -> ByteBuffer? {
        self.eventLoop.inEventLoop ? self.bufferPool.takeCoalescing() : nil
    }

    /// A cleared buffer to encode a message into before it is queued: on the event loop its spare one (so that a
    /// codec writing into it allocates no buffer once a message has been encoded there), elsewhere an empty one.
    /// Give it back with ``recycleEncodingBuffer(_:)`` once the message is queued.
    @inline(__always)
    package func takeEncodingBuffer() -> ByteBuffer {
        guard self.eventLoop.inEventLoop, let buffer = self.bufferPool.takeEncoding() else { return ByteBuffer() }
        return buffer
    }

    /// Keeps `buffer`, taken with ``takeEncodingBuffer()`` and now queued (its bytes copied, or shared by value), for
    /// the next message encoded on this event loop; elsewhere, or when it grew large, lets it go.
    @inline(__always)
    package func recycleEncodingBuffer(_ buffer: ByteBuffer) {
        guard self.eventLoop.inEventLoop else { return }
        self.bufferPool.recycleEncoding(buffer)
    }

    /// Queues request `id` and registers `continuation` for its reply, with its timeout and the task's
    /// cancellation checked, in one lock.
    func register(
        _ continuation: UnsafeContinuation<ByteBuffer, any Error>,
        id: UInt32,
        payload: ByteBuffer,
        timeout: Duration?,
        descriptors: [Int32] = [],
        reservation: OutgoingDescriptorReservation? = nil
    ) {
        let relay = self.descriptorPassing?.relay
        var group = descriptors
        var sharedPayload = false
        if group.isEmpty, relay != nil, let memory = self.sharedMemory(for: payload) {
            group = [memory]
            sharedPayload = true
        }
        var registered = false
        let action = self.state.withLock { state in
            state.register(
                id: id,
                payload: payload,
                continuation: continuation,
                isCancelled: Task.isCancelled,
                spareBuffer: { self.spareBuffer() },
                makeTimer: { timeout.map { self.scheduleTimeout(of: id, after: $0) } },
                passing: group.count,
                registerDescriptors: {
                    relay?.registerOutgoing(group, reservation: reservation)
                    registered = true
                },
                sharedPayloadLength: sharedPayload ? payload.readableBytes : nil
            )
        }
        if !group.isEmpty && !registered { DescriptorRelay.closeAll(group) }
        switch action {
        case .fail(let error):
            continuation.resume(throwing: error)
        case .registered(let scheduleFlush):
            // The caller is about to wait for the reply, so nothing more will be coalesced with this request:
            // on the event loop, write it now instead of in a task of its own.
            guard scheduleFlush else { return }
            if self.eventLoop.inEventLoop {
                self.flushPendingWrites()
            } else {
                self.scheduleFlush()
            }
        }
    }

    /// Schedules the timeout of request `id`. Called under the lock: scheduling never runs the task.
    private func scheduleTimeout(of id: UInt32, after timeout: Duration) -> Scheduled<Void> {
        self.eventLoop.scheduleTask(in: .init(timeout)) {
            self.failRequest(id, with: SocketIPCError(.timedOut, "the request got no reply within \(timeout)"))
        }
    }

    func failRequest(_ id: UInt32, with error: any Error) {
        self.finishRequest(id, with: .failure(error))
    }

    /// Ends a pending request with `result` (once: later calls for the same id do nothing), and closes the
    /// connection if it went away and this was the last thing it waited for.
    @inline(__always)
    func finishRequest(_ id: UInt32, with result: Result<ByteBuffer, any Error>) {
        switch self.state.withLock({ $0.finishRequest(id: id) }) {
        case .none:
            return
        case .resume(let continuation, let timer, let close):
            timer?.cancel()
            // Kept by its caller (it is the result): not as a slice that holds its whole read buffer, up to 1 MiB.
            continuation.resume(with: result.map { $0.compacted() })
            if close { self.closeAfterGoingAway() }
        }
    }

    /// Returns at once while the queue is below its high watermark and the channel writable; otherwise suspends
    /// until it is.
    @usableFromInline
    nonisolated(nonsending) func waitUntilWritable() async throws {
        try await self.waitUntilWritable(owner: nil)
    }

    /// As ``waitUntilWritable()``; `owner` may end the wait before the task is cancelled (a call whose deadline
    /// passed), and is told when it begins and ends.
    nonisolated(nonsending) func waitUntilWritable(owner: (any WriteWaitOwner)?) async throws {
        switch self.state.withLock({ $0.checkWritable() }) {
        case .proceed: return
        case .fail(let error): throw error
        case .wait: break
        }
        // Cancelling the task ends the wait with CancellationError (what was queued stays queued): a deadline of the
        // caller's must be able to end a send to a peer that stopped reading.
        let id = self.writeWaiterIDs.wrappingAdd(1, ordering: .relaxed).newValue
        defer { owner?.writeWaitEnded(id: id) }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                switch self.state.withLock({ $0.waitForWritability(continuation, id: id) }) {
                case .proceed: continuation.resume()
                case .fail(let error): continuation.resume(throwing: error)
                case .wait:
                    // Cancelled before the wait began: the handler below ran and found nothing to cancel. Likewise an
                    // owner that stopped already.
                    if Task.isCancelled || owner?.writeWaitBegan(id: id) == false { self.cancelWriteWait(id: id) }
                }
            }
        } onCancel: {
            self.cancelWriteWait(id: id)
        }
    }

    /// As ``waitUntilWritable()``, for at most `timeout`: a request's timeout counts from when it is made, so it
    /// covers the wait for room in the write queue while the peer reads nothing (found by a review: such a request
    /// waited until the connection closed, whatever its timeout).
    /// - Returns: What is left of `timeout` (`nil`: no limit).
    /// - Throws: `timedOut` when `timeout` passed first; what ``waitUntilWritable()`` throws.
    nonisolated(nonsending) func waitUntilWritable(within timeout: Duration?) async throws -> Duration? {
        switch self.state.withLock({ $0.checkWritable() }) {
        case .proceed: return timeout
        case .fail(let error): throw error
        case .wait: break
        }
        guard let timeout else {
            try await self.waitUntilWritable()
            return nil
        }
        let start = ContinuousClock.now
        let limit = WriteWaitLimit()
        let timer = self.eventLoop.scheduleTask(in: .init(max(timeout, .zero))) { limit.expire(on: self) }
        defer { timer.cancel() }
        do {
            try await self.waitUntilWritable(owner: limit)
        } catch is CancellationError where limit.hasExpired {
            throw SocketIPCError(
                .timedOut,
                "the request got no reply within \(timeout): the peer read nothing, and it was never sent"
            )
        }
        return max(timeout - start.duration(to: .now), .zero)
    }

    /// Ends the wait of ``waitUntilWritable(owner:)`` with `id` with `CancellationError`, if it still waits: for
    /// its ``WriteWaitOwner``.
    package func cancelWriteWait(id: UInt64) {
        self.state.withLock { $0.cancelWriteWaiter(id: id) }?.resume(throwing: CancellationError())
    }

    /// Flushes in a task of its own on the event loop: what is queued until it runs is written with it.
    func scheduleFlush() {
        self.eventLoop.execute { self.flushPendingWrites() }
        // After the work is queued: a poll that sees this ends and goes on behind the work.
        self.loopPoller.workQueued()
    }

    /// Resumes the writers a ``StateMachine/ResumeWritersAction`` names.
    func perform(_ action: StateMachine.ResumeWritersAction) {
        guard case .resume(let waiters) = action else { return }
        for waiter in waiters { waiter.resume() }
    }
}
