import Logging
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One end of a framed SocketIPC connection, on the client or the server: send one-way messages, make requests,
/// and close.
///
/// A connection is safe to use from any task. Writes from many tasks are coalesced into as few system calls as
/// possible; a writer waits (``send(_:)`` suspends) while the peer does not read, so memory per connection stays
/// bounded by ``ConnectionOptions/writeBufferHighWatermark`` plus the frames being written.
///
/// ```swift
/// try await connection.send(ByteBuffer(string: "note"))            // one-way
/// let reply = try await connection.request(ByteBuffer(string: "ping"))  // request and wait for the reply
/// ```
public final class Connection: Sendable {
    /// A number that identifies this connection in logs, unique within the process.
    public let id: UInt64
    /// The credentials of the process on the other end, read from the socket when the connection opened.
    public let peer: PeerCredentials?
    /// The logger of this connection, with `socketipc.connection` (and the peer's credentials) as metadata.
    public var logger: Logger {
        var logger = self.baseLogger
        logger[metadataKey: "socketipc.connection"] = "\(self.id)"
        if let peer = self.peer { logger[metadataKey: "socketipc.peer"] = "\(peer)" }
        return logger
    }
    private let baseLogger: Logger

    let channel: any Channel
    /// The channel's event loop, kept so that the hot path does not ask the channel for it each time.
    let eventLoop: any EventLoop
    /// The channel's socket, when known: flushes write to it directly while the channel has nothing pending.
    private let descriptor: Int32?
    let options: ConnectionOptions
    let taskExecutor: EventLoopTaskExecutor
    private let flushBufferPool: FlushBufferPool
    let busyPoller: EventLoopBusyPoller?
    private let busyPollNanoseconds: UInt64
    private let state: Mutex<State>
    private let requestIDs = Atomic<UInt32>(0)
    /// Requests received from the peer and not yet answered.
    private let unansweredRequests = Atomic<Int>(0)
    /// Set with `State.closeWhenAnswered`, so that answering a request need not lock the state to learn it is unset.
    private let wentAway = Atomic<Bool>(false)
    /// Where ``Reply/complete(_:)`` runs its work, made with the first and cancelled when the connection closes.
    let handlerTasks: ConnectionTaskSlot
    /// Set while the channel handler has stopped reading because the peer's unanswered requests reached
    /// ``ConnectionOptions/maximumConcurrentRequests``: the answer that clears it tells the handler to read again.
    private let readsWaitForAnswers = Atomic<Bool>(false)

    fileprivate struct PendingRequest {
        var continuation: UnsafeContinuation<ByteBuffer, any Error>
        var timeout: Scheduled<Void>?
    }

    fileprivate struct State {
        var outbound = OutboundQueue()
        var flushScheduled = false
        var readBatchActive = false
        var channelWritable = true
        var writeWaiters: [UnsafeContinuation<Void, any Error>] = []
        var requests: [UInt32: PendingRequest] = [:]
        /// Set once this side sent going-away: the connection closes when the peer's requests are answered and this
        /// side's own requests have their replies.
        var closeWhenAnswered = false
        /// Set once the peer sent going-away: the code new requests and (for a non-normal reason) pending ones fail with.
        var peerGoingAway: SocketIPCError?
        var closedError: SocketIPCError?
        /// Writes handed to the channel and not yet completed; while there are any, flushes go through the channel too,
        /// so that bytes leave in order.
        var writesInChannel = 0
        /// Cleared when the channel closes its socket: the descriptor number may then belong to another file.
        var descriptorIsOpen = true
    }

    init(
        id: UInt64,
        channel: any Channel,
        descriptor: Int32? = nil,
        options: ConnectionOptions,
        peer: PeerCredentials?,
        logger: Logger,
        handlerTaskOwner: ConnectionTasks.Owner = .connection
    ) {
        self.id = id
        self.handlerTasks = ConnectionTaskSlot(owner: handlerTaskOwner)
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.descriptor = descriptor
        self.options = options
        self.peer = peer
        self.baseLogger = logger
        self.taskExecutor = EventLoopTaskExecutor.shared(for: channel.eventLoop)
        self.flushBufferPool = FlushBufferPool.shared(for: channel.eventLoop)
        if let duration = options.busyPollDuration, duration > .zero {
            self.busyPoller = EventLoopBusyPoller.shared(for: channel.eventLoop)
            let (seconds, attoseconds) = duration.components
            self.busyPollNanoseconds = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        } else {
            self.busyPoller = nil
            self.busyPollNanoseconds = 0
        }
        self.state = Mutex(State())
    }

    /// Whether the connection is still open.
    public var isOpen: Bool { self.state.withLock { $0.closedError == nil } }

    // MARK: - Sending

    /// Sends a one-way message; the peer's handler receives it, and nothing answers it.
    ///
    /// Returns once the message is queued for the socket; suspends first while the peer is not reading and the
    /// queue is above its high watermark.
    /// - Parameter message: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``.
    /// - Throws: ``SocketIPCError`` with code `messageTooLarge`, or `connectionClosed` (or the reason the peer gave
    ///   when it went away) once the connection is closed.
    @inlinable
    nonisolated(nonsending) public func send(_ message: ByteBuffer) async throws {
        // Inlined into the caller, so that a send that need not wait costs no async call frame of its own.
        if try self.queueMessage(message) {
            try await self.waitUntilWritable()
        }
    }

    /// Checks the size of a one-way message and queues it; returns whether the sender must wait for the queue to
    /// drain.
    @usableFromInline
    func queueMessage(_ message: ByteBuffer) throws -> Bool {
        try self.checkSize(message, what: "message")
        return try self.enqueue(.message, id: 0, payload: message)
    }

    /// Sends a request and waits for its reply.
    ///
    /// Many requests may be in flight on one connection; each carries its own id, so replies may come back in any
    /// order. Cancelling the calling task ends the wait with `CancellationError`; a late reply is then dropped.
    /// - Parameters:
    ///   - request: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``.
    ///   - timeout: How long to wait for the reply; `nil` uses ``ConnectionOptions/requestTimeout``.
    /// - Returns: The payload of the peer's reply.
    /// - Throws: ``SocketIPCError`` with code `remoteError` (the peer's handler threw; the connection stays up),
    ///   `timedOut`, `messageTooLarge`, `peerGoingAway` or `connectionClosed`; or `CancellationError`.
    nonisolated(nonsending) public func request(_ request: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        try self.checkSize(request, what: "request")
        try await self.waitUntilWritable()
        let id = self.nextRequestID()
        let timeout = timeout ?? self.options.requestTimeout
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<ByteBuffer, any Error>) in
                self.register(continuation, id: id, payload: request, timeout: timeout)
            }
        } onCancel: {
            self.failRequest(id, with: CancellationError())
        }
    }

    /// Closes the connection after writing everything sent so far; requests still waiting for a reply then fail
    /// with `connectionClosed`. Safe to call more than once.
    ///
    /// A peer that stops reading cannot hold the connection open: after ``ConnectionOptions/closeTimeout`` (10 seconds
    /// by default) it is closed regardless.
    public func close() {
        if self.eventLoop.inEventLoop {
            self.closeAfterFlushing()
        } else {
            self.eventLoop.execute { self.closeAfterFlushing() }
        }
    }

    /// Closes the connection at once, dropping what is queued and not yet written; requests still waiting for a
    /// reply fail with `connectionClosed`, and so do later calls. For a peer that stopped reading or answering,
    /// when waiting for ``close()`` to flush is not wanted. Safe to call more than once, and after ``close()``.
    public func abort() {
        let channel = self.channel
        if self.eventLoop.inEventLoop {
            channel.close(promise: nil)
        } else {
            self.eventLoop.execute { channel.close(promise: nil) }
        }
    }

    private func closeAfterFlushing() {
        guard self.channel.isActive else { return }
        self.flushPendingWrites()
        let channel = self.channel
        let deadline = channel.eventLoop.scheduleTask(in: .init(self.options.closeTimeout)) { channel.close(promise: nil) }
        // An empty write completes once everything written before it has reached the socket.
        self.writeThroughChannel(CollectionOfOne(ByteBuffer())).whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// Waits until the connection is closed, by either side.
    public func waitUntilClosed() async {
        try? await self.channel.closeFuture.get()
    }

    // MARK: - Replies (used by `Reply`)

    func sendReply(id: UInt32, payload: ByteBuffer) {
        if payload.readableBytes > self.options.effectiveMaximumMessageSize {
            let message = "the reply of \(payload.readableBytes) bytes exceeds the maximum of \(self.options.effectiveMaximumMessageSize)"
            self.sendErrorReply(id: id, message: message)
            return
        }
        _ = try? self.enqueue(.reply, id: id, payload: payload)
        self.requestAnswered()
    }

    func sendErrorReply(id: UInt32, message: String) {
        _ = try? self.enqueue(.errorReply, id: id, payload: ByteBuffer(string: message))
        self.requestAnswered()
    }

    // MARK: - Going away

    /// Tells the peer this side is going away, and closes once every request the peer made is answered and every
    /// request this side made has its reply (or has failed: timed out, cancelled). New requests are refused.
    func goAway(_ reason: GoAwayReason, message: String) {
        var frame = ByteBuffer()
        frame.writeFrame(.goAway(reason, message: message))
        let (schedule, closeNow) = self.state.withLock { state -> (Bool, Bool) in
            guard state.closedError == nil, !state.closeWhenAnswered else { return (false, false) }
            state.outbound.appendRaw(frame)
            state.closeWhenAnswered = true
            // Sequentially consistent with `requestAnswered`: either it sees this flag or this sees its count.
            self.wentAway.store(true, ordering: .sequentiallyConsistent)
            let unanswered = self.unansweredRequests.load(ordering: .sequentiallyConsistent)
            return (state.scheduleFlushIfNeeded(), state.isDrained(unanswered))
        }
        if closeNow {
            self.closeAfterGoingAway()
        } else if schedule {
            self.scheduleFlush()
        }
    }

    private func closeAfterGoingAway() {
        self.eventLoop.execute { self.flushPendingWrites(); self.close() }
    }

    // MARK: - Internals

    @inline(__always)
    private func checkSize(_ payload: ByteBuffer, what: StaticString) throws {
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

    private func nextRequestID() -> UInt32 {
        self.requestIDs.wrappingAdd(1, ordering: .relaxed).newValue
    }

    /// Queues a frame; returns whether the queue is now above its high watermark (or the channel not writable), so
    /// that the sender should wait before it sends more.
    @inline(__always)
    @discardableResult
    private func enqueue(_ kind: FrameKind, id: UInt32, payload: ByteBuffer) throws -> Bool {
        let highWatermark = self.options.writeBufferHighWatermark
        let (schedule, full) = try self.state.withLock { state -> (Bool, Bool) in
            if let error = state.closedError { throw error }
            state.outbound.appendFrame(kind, id: id, payload: payload, pool: self.poolIfOnEventLoop)
            return (state.scheduleFlushIfNeeded(), !state.isWritable(highWatermark: highWatermark))
        }
        if schedule { self.scheduleFlush() }
        return full
    }

    /// The event loop's spare coalescing buffer may be taken only on the event loop.
    @inline(__always)
    private var poolIfOnEventLoop: FlushBufferPool? {
        self.eventLoop.inEventLoop ? self.flushBufferPool : nil
    }

    private func register(
        _ continuation: UnsafeContinuation<ByteBuffer, any Error>,
        id: UInt32,
        payload: ByteBuffer,
        timeout: Duration?
    ) {
        let outcome = self.state.withLock { state -> Result<Bool, SocketIPCError> in
            if let error = state.closedError { return .failure(error) }
            if let error = state.peerGoingAway { return .failure(error) }
            if state.closeWhenAnswered {
                return .failure(
                    SocketIPCError(.connectionClosed, "the connection is closing: this side has announced it is going away")
                )
            }
            state.requests[id] = PendingRequest(continuation: continuation, timeout: nil)
            state.outbound.appendFrame(.request, id: id, payload: payload, pool: self.poolIfOnEventLoop)
            return .success(state.scheduleFlushIfNeeded())
        }
        switch outcome {
        case .failure(let error):
            continuation.resume(throwing: error)
            return
        case .success(let schedule):
            // The caller is about to wait for the reply, so nothing more will be coalesced with this request:
            // on the event loop, write it now instead of in a task of its own.
            if schedule {
                if self.eventLoop.inEventLoop {
                    self.flushPendingWrites()
                } else {
                    self.scheduleFlush()
                }
            }
        }
        if let timeout {
            let scheduled = self.eventLoop.scheduleTask(in: .init(timeout)) {
                self.failRequest(
                    id,
                    with: SocketIPCError(.timedOut, "the request got no reply within \(timeout)")
                )
            }
            let stillPending = self.state.withLock { state -> Bool in
                guard state.requests[id] != nil else { return false }
                state.requests[id]!.timeout = scheduled
                return true
            }
            if !stillPending { scheduled.cancel() }
        }
        if Task.isCancelled { self.failRequest(id, with: CancellationError()) }
    }

    private func failRequest(_ id: UInt32, with error: any Error) {
        self.finishRequest(id, with: .failure(error))
    }

    /// Ends a pending request with `result` (once: later calls for the same id do nothing), and closes the
    /// connection if it went away and this was the last thing it waited for.
    @inline(__always)
    private func finishRequest(_ id: UInt32, with result: Result<ByteBuffer, any Error>) {
        let (pending, drained) = self.state.withLock { state -> (PendingRequest?, Bool) in
            let pending = state.requests.removeValue(forKey: id)
            return (pending, pending != nil && state.isDrained(self.unansweredRequests.load(ordering: .acquiring)))
        }
        guard let pending else { return }
        pending.timeout?.cancel()
        pending.continuation.resume(with: result)
        if drained { self.closeAfterGoingAway() }
    }

    private func requestAnswered() {
        let unanswered = self.unansweredRequests.subtract(1, ordering: .sequentiallyConsistent).newValue
        // Sequentially consistent with `pauseReadingForRequests`: either it sees this answer or this sees its flag.
        if self.readsWaitForAnswers.load(ordering: .sequentiallyConsistent) { self.resumeReadingForRequests() }
        guard unanswered == 0, self.wentAway.load(ordering: .sequentiallyConsistent) else { return }
        // If going-away is being announced right now, `goAway` sees the count at 0 itself and closes.
        if self.state.withLock({ $0.isDrained(self.unansweredRequests.load(ordering: .acquiring)) }) {
            self.closeAfterGoingAway()
        }
    }

    /// Tells the channel handler, on the event loop, that it may read again; only the answer that clears the flag
    /// does, so a burst of answers costs one hop.
    @inline(never)
    private func resumeReadingForRequests() {
        let cleared = self.readsWaitForAnswers.compareExchange(
            expected: true,
            desired: false,
            ordering: .sequentiallyConsistent
        )
        guard cleared.exchanged else { return }
        let channel = self.channel
        self.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(RequestsAnswered()) }
    }

    /// Returns at once while the queue is below its high watermark and the channel writable; otherwise suspends
    /// until it is.
    @usableFromInline
    nonisolated(nonsending) func waitUntilWritable() async throws {
        let mustWait = try self.state.withLock { state -> Bool in
            if let error = state.closedError { throw error }
            return !state.isWritable(highWatermark: self.options.writeBufferHighWatermark)
        }
        guard mustWait else { return }
        try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
            let result = self.state.withLock { state -> Result<Bool, SocketIPCError> in
                if let error = state.closedError { return .failure(error) }
                if state.isWritable(highWatermark: self.options.writeBufferHighWatermark) { return .success(true) }
                state.writeWaiters.append(continuation)
                return .success(false)
            }
            switch result {
            case .failure(let error): continuation.resume(throwing: error)
            case .success(true): continuation.resume()
            case .success(false): break
            }
        }
    }

    private func scheduleFlush() {
        self.eventLoop.execute { self.flushPendingWrites() }
    }

    private func resumeWritersIfWritable() {
        let waiters = self.state.withLock { state -> [UnsafeContinuation<Void, any Error>] in
            guard state.isWritable(highWatermark: self.options.writeBufferHighWatermark) else { return [] }
            defer { state.writeWaiters = [] }
            return state.writeWaiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

extension Connection.State {
    /// Whether a connection that went away has nothing left to wait for: no unanswered request of the peer
    /// (`unanswered`, read only once this side went away), no pending request of its own.
    @inline(__always)
    fileprivate func isDrained(_ unanswered: @autoclosure () -> Int) -> Bool {
        self.closeWhenAnswered && self.requests.isEmpty && unanswered() == 0
    }

    /// Whether a flush task must be scheduled for what was just queued (none is pending and no read batch will flush).
    @inline(__always)
    fileprivate mutating func scheduleFlushIfNeeded() -> Bool {
        if self.flushScheduled || self.readBatchActive { return false }
        self.flushScheduled = true
        return true
    }

    @inline(__always)
    fileprivate func isWritable(highWatermark: Int) -> Bool {
        self.channelWritable && self.outbound.byteCount < highWatermark
    }
}

// MARK: - Event loop side (called by ConnectionChannelHandler)

extension Connection {
    /// Marks the start of a read batch: what is queued during it is flushed by ``readBatchEnded()``.
    @inline(__always)
    func readBatchStarted() {
        self.state.withLock { $0.readBatchActive = true }
    }

    /// Flushes what the read batch queued.
    func readBatchEnded() {
        self.flushPendingWrites()
    }

    /// Writes every queued frame and flushes. Runs on the event loop.
    ///
    /// On Linux the frames go straight to the socket with `send(2)` while the channel has no writes of its own
    /// pending, which skips the channel's pipeline and write queue on the common path; whatever the socket does not
    /// take at once (or an error, which the channel then reports) goes through the channel.
    func flushPendingWrites() {
        let (earlier, tail, mayWriteDirectly, writersWait) = self.state.withLock {
            state -> ([ByteBuffer], ByteBuffer?, Bool, Bool) in
            state.flushScheduled = false
            state.readBatchActive = false
            let taken = state.outbound.takeAll()
            return (
                taken.earlier, taken.tail, state.descriptorIsOpen && state.writesInChannel == 0,
                !state.writeWaiters.isEmpty
            )
        }
        self.busyPoller?.arm(for: self.busyPollNanoseconds)
        guard !earlier.isEmpty || tail != nil else { return }
        #if os(Linux)
        var writingDirectly = mayWriteDirectly ? self.descriptor : nil
        #else
        var writingDirectly: Int32? = nil
        #endif
        // What the socket did not take at once, in order; allocated only then.
        var unwritten: [ByteBuffer] = []
        for var buffer in earlier {
            if let descriptor = writingDirectly, Self.writeWithoutBlocking(&buffer, to: descriptor) { continue }
            writingDirectly = nil
            unwritten.append(buffer)
        }
        if var buffer = tail {
            if let descriptor = writingDirectly, Self.writeWithoutBlocking(&buffer, to: descriptor) {
                // written
            } else {
                unwritten.append(buffer)
            }
        }
        if !unwritten.isEmpty {
            self.writeThroughChannel(unwritten)
        }
        if let tail { self.flushBufferPool.recycle(tail) }
        // A writer that starts waiting after the lock above waits for a fuller queue, which a later flush drains.
        if writersWait { self.resumeWritersIfWritable() }
    }

    /// Writes as much of `buffer` to `descriptor` as the socket takes now (`send(2)`, never raising `SIGPIPE`).
    /// - Returns: Whether all of it was written; if not, `buffer` holds the rest.
    private static func writeWithoutBlocking(_ buffer: inout ByteBuffer, to descriptor: Int32) -> Bool {
        #if os(Linux)
        // EAGAIN, or an error the channel meets again and reports: the rest goes through the channel.
        return SocketSend.sendAll(descriptor, from: &buffer) == .done
        #else
        return false
        #endif
    }

    /// Writes `buffers` through the channel and flushes; until they are written, flushes do not write directly.
    /// Runs on the event loop.
    @discardableResult
    func writeThroughChannel(_ buffers: some Collection<ByteBuffer>) -> EventLoopFuture<Void> {
        self.state.withLock { $0.writesInChannel += 1 }
        let written = self.eventLoop.makePromise(of: Void.self)
        var index = buffers.startIndex
        while index != buffers.endIndex {
            let next = buffers.index(after: index)
            self.channel.write(buffers[index], promise: next == buffers.endIndex ? written : nil)
            index = next
        }
        self.channel.flush()
        written.futureResult.whenComplete { _ in self.state.withLock { $0.writesInChannel -= 1 } }
        return written.futureResult
    }

    /// Called when the channel has closed its socket, before anything else: nothing may write to the descriptor
    /// from now on.
    func socketClosed() {
        self.state.withLock { $0.descriptorIsOpen = false }
    }

    func writabilityChanged(_ isWritable: Bool) {
        self.state.withLock { $0.channelWritable = isWritable }
        if isWritable { self.resumeWritersIfWritable() }
    }

    /// Counts a request of the peer; returns how many are now unanswered.
    @inline(__always)
    func requestReceived() -> Int {
        self.unansweredRequests.add(1, ordering: .relaxed).newValue
    }

    /// Called by the channel handler when the peer's unanswered requests reached the maximum: returns `true` if the
    /// handler must stop reading, in which case a ``RequestsAnswered`` event reaches its pipeline once an answer
    /// makes room; `false` if answers already made room.
    func pauseReadingForRequests() -> Bool {
        self.readsWaitForAnswers.store(true, ordering: .sequentiallyConsistent)
        let unanswered = self.unansweredRequests.load(ordering: .sequentiallyConsistent)
        guard unanswered < self.options.maximumConcurrentRequests else { return true }
        // Room was made meanwhile: take the flag back, unless an answer took it and its event is on the way.
        return !self.readsWaitForAnswers.compareExchange(
            expected: true,
            desired: false,
            ordering: .sequentiallyConsistent
        ).exchanged
    }

    /// Whether a request is in flight either way: one of the peer's waits for its answer, or one of this side's for
    /// its reply.
    var hasRequestsInFlight: Bool {
        self.unansweredRequests.load(ordering: .relaxed) > 0 || self.state.withLock { !$0.requests.isEmpty }
    }

    /// A reply arrived; one to a request that timed out or was cancelled is dropped: nobody waits for it any more.
    func replyReceived(id: UInt32, result: Result<ByteBuffer, SocketIPCError>) {
        self.finishRequest(id, with: result.mapError { $0 })
    }

    /// The peer sent going-away. After reason `0x00` this side sends no new requests, answers the peer's requests
    /// still unanswered and waits for the replies to its own, then closes (the peer closes too once it has answered
    /// this side's requests). After any other reason the caller closes the connection at once.
    func peerIsGoingAway(_ reason: GoAwayReason, message: String) {
        let text = message.isEmpty ? "the peer is going away" : "the peer is going away: \(message)"
        let error = SocketIPCError(reason.errorCode, text)
        let closeNow = self.state.withLock { state -> Bool in
            state.peerGoingAway = error
            guard reason == .normal, state.closedError == nil, !state.closeWhenAnswered else { return false }
            state.closeWhenAnswered = true
            self.wentAway.store(true, ordering: .sequentiallyConsistent)
            return state.isDrained(self.unansweredRequests.load(ordering: .sequentiallyConsistent))
        }
        self.logger.debug("peer is going away", metadata: ["reason": "\(reason)", "message": "\(message)"])
        if closeNow { self.closeAfterGoingAway() }
    }

    /// Fails everything that waits on this connection; called once, when the channel becomes inactive.
    func closed(error: SocketIPCError?) {
        let (requests, waiters, finalError) = self.state.withLock {
            state -> ([UInt32: PendingRequest], [UnsafeContinuation<Void, any Error>], SocketIPCError) in
            // The reason the peer gave when it went away says more than the I/O error its close may cause here.
            let finalError: SocketIPCError
            if let goingAway = state.peerGoingAway, goingAway.code != .peerGoingAway {
                finalError = goingAway
            } else {
                finalError = error ?? .closed
            }
            state.closedError = finalError
            defer {
                state.requests = [:]
                state.writeWaiters = []
                _ = state.outbound.takeAll()
            }
            return (state.requests, state.writeWaiters, finalError)
        }
        for (_, pending) in requests {
            pending.timeout?.cancel()
            pending.continuation.resume(throwing: finalError)
        }
        for waiter in waiters { waiter.resume(throwing: finalError) }
    }

    /// What the peer said when it announced it is going away, once it has.
    var peerGoingAwayError: SocketIPCError? { self.state.withLock { $0.peerGoingAway } }

    /// The error the connection closed with, once it is closed.
    var closeError: SocketIPCError? { self.state.withLock { $0.closedError } }
}

/// The event a ``Connection`` fires through its channel's pipeline when an answer brought the peer's unanswered
/// requests below ``ConnectionOptions/maximumConcurrentRequests`` while reading was paused for them.
struct RequestsAnswered: Sendable {}
