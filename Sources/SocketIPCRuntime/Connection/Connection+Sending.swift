import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

// Sending one-way messages and requests, waiting for room while the peer does not read.
extension Connection {
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
}
