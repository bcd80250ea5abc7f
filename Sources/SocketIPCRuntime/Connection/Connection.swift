import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

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
    /// The peer process, held by a pidfd taken when it connected, when ``ConnectionOptions/holdsPeerProcess`` is set
    /// and the kernel gives one (Linux 6.5 and later); `nil` otherwise.
    public let peerProcess: PeerProcess?
    /// The logger of this connection, with `socketipc.connection` (and the peer's credentials) as metadata.
    public var logger: Logger {
        var logger = self.baseLogger
        logger[metadataKey: "socketipc.connection"] = "\(self.id)"
        if let peer = self.peer { logger[metadataKey: "socketipc.peer"] = "\(peer)" }
        return logger
    }
    private let baseLogger: Logger

    /// The state machine a connection keeps under its lock: continuations wait for replies and for writability,
    /// and timers are NIO's scheduled tasks.
    typealias StateMachine = ConnectionStateMachine<
        UnsafeContinuation<ByteBuffer, any Error>,
        UnsafeContinuation<Void, any Error>,
        Scheduled<Void>
    >

    /// The channel the connection's frames travel on.
    let channel: any Channel
    /// The channel's event loop, kept so that the hot path does not ask the channel for it each time.
    let eventLoop: any EventLoop
    /// Where flushes write: straight to the socket where it may, else through the channel.
    let writer: any FrameWriter
    /// The limits and timeouts the connection was opened with.
    /// The connection's options, shared with its server's other connections.
    let sharedOptions: SharedConnectionOptions
    /// The connection's limits and timeouts.
    var options: ConnectionOptions { self.sharedOptions.value }
    /// Runs the client's tasks on the channel's event loop (`Client.withConnection`).
    let taskExecutor: EventLoopTaskExecutor
    /// The event loop's spare buffers: for coalescing (taken when the queue needs one, given back after each flush)
    /// and for encoding typed messages.
    let bufferPool: EventLoopBufferPool
    /// The event loop's busy poller when this connection polls (``ConnectionOptions/busyPolling`` not off, and more
    /// than one core); `nil` otherwise.
    let busyPoller: EventLoopBusyPoller?
    /// The event loop's busy poller whatever this connection's mode: work this connection queues on the loop ends
    /// a poll that other connections of the loop started, so that it does not wait behind it.
    let loopPoller: EventLoopBusyPoller
    /// The polling window after each flush, in nanoseconds: the fixed window, or the adaptive one's maximum; 0 when
    /// this connection does not poll.
    let busyPollNanoseconds: UInt64
    /// Whether the poller sizes its window to the traffic (``BusyPolling/adaptive(maximum:)``).
    let busyPollsAdaptively: Bool
    /// Everything the connection tracks; each operation locks it once, and acts on what it returns outside the lock.
    let state: Mutex<StateMachine>
    /// How many request ids this side has taken (the last id is this count's low 32 bits); not state: ids are
    /// only told apart.
    let requestIDs = Atomic<UInt64>(0)
    /// Tells apart the senders waiting in ``waitUntilWritable()``, for their cancellation.
    let writeWaiterIDs = Atomic<UInt64>(0)
    /// Where ``Reply/complete(_:)`` runs its work, made with the first and cancelled when the connection closes.
    let handlerTasks: ConnectionTaskSlot
    /// Calls and keepalive: the peer's hello flags, call ids, the services layer's receiver.
    let calls: ConnectionCalls
    /// Descriptor passing, when ``ConnectionOptions/maximumDescriptorsPerMessage`` turned it on.
    let descriptorPassing: DescriptorPassing?
    /// The channel's socket, when known (with a relay, its end of the relay's socket pair): the keepalive asks it how
    /// much the peer has not read yet (``Connection/unreadBytes()``).
    let socketDescriptor: Int32?

    /// Makes the connection of `channel`; the channel handler calls this once the channel is active.
    /// - Parameters:
    ///   - descriptor: The channel's socket, when known: flushes write to it directly while the channel has nothing
    ///     pending (Linux). Ignored when `writer` is given.
    ///   - writer: Where flushes write; by default a ``SocketFrameWriter`` of `channel` and `descriptor`.
    ///   - handlerTaskOwner: Who owns the tasks of the connection's asynchronous replies: the server's task group,
    ///     or (a client's connection) a task of the connection's own.
    ///   - userCancels: The cancel allowance the peer's user shares across its connections (a server's), if any.
    init(
        id: UInt64,
        channel: any Channel,
        descriptor: Int32? = nil,
        writer: (any FrameWriter)? = nil,
        options sharedOptions: SharedConnectionOptions,
        peer: PeerCredentials?,
        logger: Logger,
        handlerTaskOwner: ConnectionTasks.Owner = .connection,
        descriptorRelay: DescriptorRelay? = nil,
        userCancels: SharedCancelAllowance? = nil
    ) {
        self.id = id
        self.descriptorPassing = descriptorRelay.map { DescriptorPassing(relay: $0) }
        self.socketDescriptor = descriptor
        self.handlerTasks = ConnectionTaskSlot(owner: handlerTaskOwner)
        if case .connection = handlerTaskOwner {
            self.calls = ConnectionCalls(isInitiator: true)
        } else {
            self.calls = ConnectionCalls(isInitiator: false, userCancels: userCancels)
        }
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.writer = writer ?? SocketFrameWriter(channel: channel, descriptor: descriptor)
        self.sharedOptions = sharedOptions
        let options = sharedOptions.value
        self.peer = peer
        // With a relay, the channel's descriptor is the relay's socket pair; the peer is on the relay's socket.
        if options.holdsPeerProcess, let descriptor = descriptorRelay?.socket ?? descriptor, let peer {
            self.peerProcess = PeerProcess.take(descriptor: descriptor, processID: peer.processID)
        } else {
            self.peerProcess = nil
        }
        self.baseLogger = logger
        self.taskExecutor = EventLoopTaskExecutor.shared(for: channel.eventLoop)
        self.bufferPool = EventLoopBufferPool.shared(for: channel.eventLoop)
        self.loopPoller = EventLoopBusyPoller.shared(for: channel.eventLoop)
        if let window = options.busyPolling.window, EventLoopBusyPoller.isAvailable {
            self.busyPoller = self.loopPoller
            self.busyPollNanoseconds = window.nanoseconds
            self.busyPollsAdaptively = window.adaptive
        } else {
            self.busyPoller = nil
            self.busyPollNanoseconds = 0
            self.busyPollsAdaptively = false
        }
        self.state = Mutex(
            StateMachine(
                writeBufferHighWatermark: options.writeBufferHighWatermark,
                maximumConcurrentRequests: options.maximumConcurrentRequests,
                maximumUnansweredRequestBytes: options.effectiveMaximumMessageSize
            )
        )
    }

    /// Whether the connection is still open.
    public var isOpen: Bool { self.state.withLock { $0.isOpen } }

    // MARK: - Sending

    /// Sends a one-way message; the peer's handler receives it, and nothing answers it.
    ///
    /// Returns once the message is queued for the socket; suspends first while the peer is not reading and the
    /// queue is above its high watermark. Cancelling the calling task ends that wait with `CancellationError`; the
    /// message stays queued (close or abort the connection to drop it).
    /// - Parameter message: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``.
    /// - Throws: `SocketIPCError` with code `messageTooLarge`, or `connectionClosed` (or the reason the peer gave
    ///   when it went away) once the connection is closed; `CancellationError`.
    @inlinable
    nonisolated(nonsending) public func send(_ message: ByteBuffer) async throws {
        // Inlined into the caller, so that a send that need not wait costs no async call frame of its own.
        if try self.queueMessage(message) {
            try await self.waitUntilWritable()
        }
    }

    /// Checks the size of a one-way message and queues it; returns whether the sender must wait for the queue to
    /// drain. A sender that waits with ``waitUntilWritten()`` next (which gives up on a peer that takes nothing) calls
    /// it instead of ``send(_:)``, whose wait for room has no end but the peer's reading or the task's cancellation.
    /// - Throws: What ``send(_:)`` throws, but `CancellationError`.
    @usableFromInline
    package func queueMessage(_ message: ByteBuffer) throws -> Bool {
        try self.checkSize(message, what: "message")
        return try self.queueCheckedData(.message, id: 0, message)
    }

    /// Queues a frame of `kind` (a one-way message, or a call's message) whose payload's size was checked, without
    /// descriptors: in shared memory where the connection puts large payloads there, else in the queue; returns
    /// whether the sender must wait for the queue to drain.
    @inline(__always)
    func queueCheckedData(_ kind: FrameKind, id: UInt32, _ message: ByteBuffer) throws -> Bool {
        if self.descriptorPassing != nil, let memory = self.sharedMemory(for: message) {
            return try self.queueShared(kind, id: id, length: message.readableBytes, memory: memory)
        }
        let (action, flushEarly) = self.state.withLock {
            (
                $0.enqueue(kind, id: id, payload: message, spareBuffer: { self.spareBuffer() }),
                $0.shouldFlushEarly(threshold: Self.earlyFlushThreshold)
            )
        }
        return try self.queued(action, flushEarly: flushEarly)
    }

    /// After a frame was queued: schedules the flush `action` asks for, or flushes at once on the event loop when
    /// `flushEarly` and the queue has room; returns whether the sender must wait for the queue to drain.
    /// - Throws: The connection's error once it is closed (nothing was queued).
    @inline(__always)
    func queued(_ action: StateMachine.EnqueueAction, flushEarly: Bool) throws -> Bool {
        switch action {
        case .fail(let error):
            throw error
        case .queued(let scheduleFlush, let mustWait):
            if scheduleFlush { self.scheduleFlush() }
            if flushEarly && !mustWait { self.flushEarlyIfOnEventLoop() }
            return mustWait
        }
    }

    /// Queued bytes from which a sender on the event loop flushes at once (64 KiB, what ``EventLoopBufferPool`` keeps).
    static var earlyFlushThreshold: Int { 64 * 1024 }

    /// Flushes now when called on the event loop (a sender whose task runs there queues until it yields otherwise);
    /// elsewhere the scheduled flush runs in parallel with the sender anyway.
    @inline(never)
    func flushEarlyIfOnEventLoop() {
        if self.eventLoop.inEventLoop { self.flushPendingWrites() }
    }

    /// Sends a request and waits for its reply.
    ///
    /// Many requests may be in flight on one connection; each carries its own id, so replies may come back in any
    /// order. Cancelling the calling task ends the wait with `CancellationError`; a late reply is then dropped.
    /// - Parameters:
    ///   - request: The payload, 0 bytes up to ``ConnectionOptions/maximumMessageSize``.
    ///   - timeout: How long to wait for the reply; `nil` uses ``ConnectionOptions/requestTimeout``.
    /// - Returns: The payload of the peer's reply.
    /// - Throws: `SocketIPCError` with code `remoteError` (the peer's handler threw; the connection stays up),
    ///   `timedOut`, `messageTooLarge`, `peerGoingAway` or `connectionClosed`; or `CancellationError`.
    nonisolated(nonsending) public func request(_ request: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        try self.checkSize(request, what: "request")
        // The timeout covers the wait for room too: a peer that reads nothing must not hold a request past it.
        let timeout = try await self.waitUntilWritable(within: timeout ?? self.options.requestTimeout)
        let id = try self.nextRequestID()
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
        self.calls.closedLocally.store(true, ordering: .relaxed)
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
        self.calls.closedLocally.store(true, ordering: .relaxed)
        let channel = self.channel
        if self.eventLoop.inEventLoop {
            channel.close(promise: nil)
        } else {
            self.eventLoop.execute { channel.close(promise: nil) }
        }
    }

    private func closeAfterFlushing() {
        guard self.channel.isActive else { return }
        self.flushPendingWrites(force: true)
        let channel = self.channel
        let deadline = channel.eventLoop.scheduleTask(in: .init(self.options.closeTimeout)) { channel.close(promise: nil) }
        // An empty write completes once everything written before it has reached the socket.
        self.writeThroughChannel(CollectionOfOne(ByteBuffer())).whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// Waits until everything queued so far is written to the socket (the kernel holds it for the peer), for a
    /// sender that reports delivery only then, as `socket-ipc send` does: a close after a body that returned flushes
    /// for at most ``ConnectionOptions/closeTimeout`` and then drops the rest (found by a review: `send` said "sent"
    /// of a message the server then got only in part). A peer that takes none of it for a whole
    /// ``ConnectionOptions/closeTimeout`` (10 seconds by default) ends the wait and the connection: it reads nothing.
    /// Cancelling the calling task aborts the connection.
    /// - Throws: `timedOut` for a peer that took nothing for that long; the reason the connection closed
    ///   (``closeReason``), or `connectionClosed`, when it closes first.
    package func waitUntilWritten() async throws {
        let stallLimit = self.options.closeTimeout
        let stalled = NIOLockedValueBox(false)
        let written = self.eventLoop.flatSubmit { () -> EventLoopFuture<Void> in
            let written = self.writeMarker()
            // Progress is the socket taking bytes or the peer reading those it holds (found by a review: a peer
            // reading 150 KB/s with 2 MB in its socket was taken for one that reads nothing).
            let last = NIOLockedValueBox(self.progress())
            let watch = self.eventLoop.scheduleRepeatedTask(initialDelay: .init(stallLimit), delay: .init(stallLimit)) {
                task in
                let now = self.progress()
                guard last.withLockedValue({ $0 }) == now else {
                    last.withLockedValue { $0 = now }
                    return
                }
                stalled.withLockedValue { $0 = true }
                task.cancel()
                self.channel.close(promise: nil)
                // What the relay would still pass on after the close must not reach the peer: the sender is told the
                // message was not written (found by a review: a server that read after 15 s got all of a message
                // that `send --fd` had reported as timed out).
                self.descriptorPassing?.relay.abort()
            }
            written.whenComplete { _ in watch.cancel() }
            return written
        }
        do {
            try await withTaskCancellationHandler {
                try await written.get()
                // With a relay, the channel wrote to the relay's socket pair: then until the relay has passed it on
                // (found by a review: `send --fd` said "sent" of what the relay then dropped at its close timeout).
                if let relay = self.descriptorPassing?.relay {
                    try await self.waitUntilRelayed(relay, stallLimit: stallLimit, stalled: stalled)
                }
            } onCancel: {
                self.abort()
            }
        } catch {
            try Task.checkCancellation()
            if stalled.withLockedValue({ $0 }) {
                // Closed by then, as the error says (found in a loaded full run: `isOpen` was still true for a moment,
                // the write's failure having come before the close reached the connection).
                await self.waitUntilClosed()
                throw SocketIPCError(.timedOut, "the peer took nothing more of what was sent for \(stallLimit): it stopped reading")
            }
            throw self.closeReason
                ?? SocketIPCError(.connectionClosed, "the connection closed before everything sent was written")
        }
    }

    /// Calls `body` once everything queued on the connection so far has been written to the socket (the kernel holds
    /// it for the peer), or the connection has closed, whichever comes first, on the connection's event loop; for as
    /// long as it takes: a peer that reads nothing keeps it waiting, and the connection open, for as long as the
    /// connection lasts (its write timeout, ``ServerConfiguration/writeTimeout``, may close it). A close calls it
    /// before the connection's handler hears of the close. With descriptor passing, written means handed to the relay.
    /// `serve` holds a reply's charge against its user's budget until then (found by a review: replies kept below the
    /// write watermark, about 2 MiB on each of 1,000 connections, escaped a wait for writability and took the server
    /// to 3.7 GB).
    package func whenDrained(_ body: @escaping @Sendable () -> Void) {
        self.eventLoop.execute {
            self.writeMarker().whenComplete { _ in body() }
        }
    }

    /// Polls `relay` every 10 ms until it has passed on what the channel wrote; a peer that reads none of it for
    /// `stallLimit` closes the connection (`stalled` set).
    private func waitUntilRelayed(
        _ relay: DescriptorRelay,
        stallLimit: Duration,
        stalled: NIOLockedValueBox<Bool>
    ) async throws {
        var last = try await self.eventLoop.submit { self.progress() }.get()
        var lastChange = ContinuousClock.now
        while !relay.outboundDrained() {
            try await Task.sleep(for: .milliseconds(10))
            let now = try await self.eventLoop.submit { self.progress() }.get()
            if now != last {
                last = now
                lastChange = .now
            } else if ContinuousClock.now - lastChange > stallLimit {
                stalled.withLockedValue { $0 = true }
                self.abort()
                relay.abort()
                throw SocketIPCError(.timedOut, "stalled")
            }
        }
    }

    /// Waits until the connection is closed, by either side. On a connection that passes descriptors
    /// (``ConnectionOptions/maximumDescriptorsPerMessage``), also until its relay has written what the connection
    /// wrote to the socket and closed it (bounded by ``ConnectionOptions/closeTimeout`` for a peer that stopped
    /// reading), so that a process may exit once this returns.
    public func waitUntilClosed() async {
        try? await self.channel.closeFuture.get()
        if let relay = self.descriptorPassing?.relay { await relay.waitUntilFinished() }
    }

    /// Calls `body` once the connection's channel is closed (at once if it already is), on its event loop; for a
    /// wait that must end early when cancelled, which ``waitUntilClosed()`` does not.
    package func whenClosed(_ body: @escaping @Sendable () -> Void) {
        self.channel.closeFuture.whenComplete { _ in body() }
    }

    // MARK: - Replies (used by `Reply`)

    /// Answers the peer's request `id` with `payload`, or with an error reply if `payload` exceeds
    /// ``ConnectionOptions/maximumMessageSize``. Does nothing once the connection is closed.
    func sendReply(id: UInt32, ticket: ReplyTicket, payload: ByteBuffer) {
        self.sendReply(id: id, ticket: ticket, payload: payload, descriptors: [])
    }

    /// Answers the peer's request `id` with `payload` and the descriptors of `group` (owned by the connection from
    /// now on), or with an error reply if `payload` exceeds ``ConnectionOptions/maximumMessageSize``. Does nothing
    /// once the connection is closed.
    func sendReply(id: UInt32, ticket: ReplyTicket, payload: ByteBuffer, descriptors group: [Int32]) {
        if payload.readableBytes > self.options.effectiveMaximumMessageSize {
            let message = "the reply of \(payload.readableBytes) bytes exceeds the maximum of \(self.options.effectiveMaximumMessageSize)"
            DescriptorRelay.closeAll(group)
            self.sendErrorReply(id: id, ticket: ticket, message: message)
            return
        }
        self.answer(.reply, id: id, ticket: ticket, payload: payload, descriptors: group)
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
        descriptors: [Int32] = []
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
                        relay?.registerOutgoing(group)
                        registered = true
                    },
                    sharedPayloadLength: sharedPayload ? payload.readableBytes : nil
                )
            }
            if !registered { DescriptorRelay.closeAll(group) }
        }
        if action.scheduleFlush { self.scheduleFlush() }
        if action.resumeReading { self.resumeReading() }
        if action.close { self.closeAfterGoingAway() }
    }

    /// Tells the channel handler, on the event loop, that it may read again.
    @inline(never)
    private func resumeReading() {
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
        descriptors: [Int32] = []
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
                    relay?.registerOutgoing(group)
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

    private func failRequest(_ id: UInt32, with error: any Error) {
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
