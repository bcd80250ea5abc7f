import NIOCore

// The write side: queueing frames, flushing them, and the writers who wait for the queue to drain.
extension ConnectionStateMachine {
    /// What to do after queueing a frame.
    @usableFromInline
    package enum EnqueueAction: Equatable, Sendable {
        /// The connection is closed: nothing was queued; the sender fails with this error.
        case fail(SocketIPCError)
        /// The frame is queued. `scheduleFlush`: no flush was due yet, so the caller schedules one on the event loop
        /// (a scheduled flush or the read batch in progress writes it otherwise). `mustWait`: the queue is at or
        /// above its high watermark, or the channel is not writable, so the sender waits before it sends more.
        case queued(scheduleFlush: Bool, mustWait: Bool)
    }

    /// Whether a sender may go on, or must wait for the queue to drain.
    @usableFromInline
    package enum WritabilityAction: Equatable, Sendable {
        /// The queue is below its high watermark and the channel writable: go on (resume the waiter at once).
        case proceed
        /// Wait: a later ``writersMayResume()`` or ``writabilityChanged(_:)`` releases the sender.
        case wait
        /// The connection is closed: fail with this error.
        case fail(SocketIPCError)
    }

    /// What a flush must write.
    @usableFromInline
    package enum FlushAction {
        /// Nothing was queued.
        case none
        /// Write `batch`, in order. `mayWriteDirectly`: the socket is open and the channel holds no writes of its
        /// own, so the bytes may go straight to the descriptor; otherwise they go through the channel, after what it
        /// holds. `writersWaiting`: senders wait for the queue to drain, so once written call
        /// ``writersMayResume()``.
        case write(OutboundQueue.Batch, mayWriteDirectly: Bool, writersWaiting: Bool)
    }

    /// The senders to release.
    @usableFromInline
    package enum ResumeWritersAction {
        /// None: nobody waits, or the queue is still full or the channel not writable.
        case none
        /// Resume these, in order.
        case resume([WriteWaiter])
    }

    /// A one-way message or another frame of this side is queued.
    /// - Parameters:
    ///   - kind: The frame's kind.
    ///   - id: The frame's id, for the kinds that carry one.
    ///   - payload: The frame's payload.
    ///   - spareBuffer: Asked only when the queue needs a new coalescing buffer: a cleared buffer to reuse, or
    ///     `nil`.
    ///   - descriptors: How many descriptors the frame carries: when more than 0, a descriptors frame (`0x0D`)
    ///     announcing them is queued right before it, and `registerDescriptors` runs first, under the same lock, so
    ///     that whoever attaches descriptors to the bytes sees them in the order of their frames.
    ///   - sharedPayloadLength: When set, the frame's payload of this many bytes is in the shared memory the
    ///     descriptors frame passes, and a shared-payload frame (`0x0E`) is queued instead of the frame itself.
    @inlinable
    @inline(__always)
    package mutating func enqueue(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        spareBuffer: () -> ByteBuffer?,
        passing descriptors: Int = 0,
        registerDescriptors: () -> Void = {},
        sharedPayloadLength: Int? = nil
    ) -> EnqueueAction {
        if case .closed(let closed) = self.state { return .fail(closed.error) }
        self.appendOutbound(
            kind, id: id, payload: payload, spareBuffer: spareBuffer, passing: descriptors,
            registerDescriptors: registerDescriptors, sharedPayloadLength: sharedPayloadLength
        )
        return .queued(
            scheduleFlush: self.outbound.scheduleFlushIfNeeded(),
            mustWait: !self.outbound.isWritable(highWatermark: self.writeBufferHighWatermark)
        )
    }

    /// A call's control frame (open, end, cancel or credit) of this side is queued, written straight into the
    /// coalescing buffer; as ``enqueue(_:id:payload:spareBuffer:passing:registerDescriptors:sharedPayloadLength:)``
    /// otherwise.
    @inlinable
    package mutating func enqueueCallControlFrame(
        id: UInt32,
        _ frame: CallFrame,
        spareBuffer: () -> ByteBuffer?
    ) -> EnqueueAction {
        if case .closed(let closed) = self.state { return .fail(closed.error) }
        self.outbound.queue.appendCallControlFrame(id: id, frame, spareBuffer: spareBuffer)
        return .queued(
            scheduleFlush: self.outbound.scheduleFlushIfNeeded(),
            mustWait: !self.outbound.isWritable(highWatermark: self.writeBufferHighWatermark)
        )
    }

    /// Queues a frame: first, when it carries descriptors, the descriptors frame announcing them (after
    /// `registerDescriptors`, so that whoever attaches them sees them in the order of their frames); then the frame,
    /// or the shared-payload frame standing for it when its payload travels in shared memory.
    @inlinable
    @inline(__always)
    mutating func appendOutbound(
        _ kind: FrameKind,
        id: UInt32,
        payload: ByteBuffer,
        spareBuffer: () -> ByteBuffer?,
        passing descriptors: Int,
        registerDescriptors: () -> Void,
        sharedPayloadLength: Int?
    ) {
        if descriptors > 0 {
            registerDescriptors()
            self.outbound.queue.appendDescriptorsFrame(count: descriptors, spareBuffer: spareBuffer)
        }
        if let sharedPayloadLength {
            self.outbound.queue.appendSharedPayloadFrame(kind, id: id, length: sharedPayloadLength, spareBuffer: spareBuffer)
        } else {
            self.outbound.queue.appendFrame(kind, id: id, payload: payload, spareBuffer: spareBuffer)
        }
    }

    /// The most frames the peer may send that this side must answer (requests, pings, calls' opens) while it does not
    /// read this side's writes (the channel not writable: more than its watermark, 2 MiB, handed to the socket and
    /// not taken by the peer): 10,000, as
    /// Go's HTTP/2 server bounds the control frames queued for a peer (`maxQueuedControlFrames`, its fix for the
    /// ping and settings floods of CVE-2019-9512 and CVE-2019-9515).
    @inlinable
    package static var maximumAnswersOwedUnread: UInt32 { 10_000 }

    /// The peer sent a frame this side answers: returns `false` when it is one more than
    /// ``maximumAnswersOwedUnread`` sent while the peer did not read this side's writes, so the connection closes
    /// instead of queueing answers without bound. Only the channel's writability counts, not this side's own queue,
    /// which holds a read batch's answers until the batch ends by design: a peer that pipelines many requests in one
    /// write is not taken for one that does not read. A side that stops reading when it cannot write (a server)
    /// never gets near it; this bounds a client, which keeps reading so that no two peers wait on each other. The
    /// count starts again whenever the channel becomes writable.
    @inlinable
    package mutating func answerOwed() -> Bool {
        if self.outbound.channelWritable {
            self.outbound.answersOwedUnread = 0
            return true
        }
        self.outbound.answersOwedUnread &+= 1
        return self.outbound.answersOwedUnread <= Self.maximumAnswersOwedUnread
    }

    /// A sender asks whether it may go on before it sends (the fast check, before it makes anything to wait with).
    @inlinable
    @inline(__always)
    package func checkWritable() -> WritabilityAction {
        if case .closed(let closed) = self.state { return .fail(closed.error) }
        return self.outbound.isWritable(highWatermark: self.writeBufferHighWatermark) ? .proceed : .wait
    }

    /// A sender is ready to wait with `waiter`: it is kept (``WritabilityAction/wait``) unless the queue drained or
    /// the connection closed meanwhile.
    /// - Parameter id: Tells this wait from the others, for ``cancelWriteWaiter(id:)``.
    @inlinable
    package mutating func waitForWritability(_ waiter: WriteWaiter, id: UInt64) -> WritabilityAction {
        if case .closed(let closed) = self.state { return .fail(closed.error) }
        if self.outbound.isWritable(highWatermark: self.writeBufferHighWatermark) { return .proceed }
        self.outbound.writeWaiters.append((id, waiter))
        return .wait
    }

    /// How many senders wait for the queue to drain.
    package var writersWaiting: Int { self.outbound.writeWaiters.count }

    /// The sender waiting with `id` was cancelled: its waiter, for the caller to resume with the cancellation, if it
    /// still waits (none if it was released or failed already).
    @inlinable
    package mutating func cancelWriteWaiter(id: UInt64) -> WriteWaiter? {
        guard let index = self.outbound.writeWaiters.firstIndex(where: { $0.id == id }) else { return nil }
        return self.outbound.writeWaiters.remove(at: index).waiter
    }

    /// The channel handler starts a read batch: what is queued during it is flushed when it ends, so no flush
    /// needs scheduling meanwhile.
    @inlinable
    @inline(__always)
    package mutating func readBatchStarted() {
        self.outbound.readBatchActive = true
    }

    /// Bytes from which a flush hands what is queued to a channel that still holds earlier writes (64 KiB); below,
    /// it waits for them to be written (``channelWriteCompleted()``).
    @inlinable
    package static var channelChunkBytes: Int { 65_536 }

    /// A flush runs on the event loop (scheduled, or at the end of a read batch): takes everything queued.
    ///
    /// While the channel still holds earlier writes (the peer is not reading fast enough), less than
    /// ``channelChunkBytes`` stays queued until they are written, unless `force` (a close, which writes after it):
    /// every buffer handed to the channel holds its capacity until the peer reads it, while the channel's
    /// watermarks count only its bytes, so a peer that sends pings and never reads would otherwise pin a
    /// coalescing buffer of at least 16 KiB for every 9-byte pong.
    @inlinable
    @inline(__always)
    package mutating func flush(force: Bool = false) -> FlushAction {
        self.outbound.flushScheduled = false
        self.outbound.readBatchActive = false
        guard !self.outbound.queue.isEmpty else { return .none }
        if !force, self.outbound.writesInChannel > 0, self.outbound.queue.byteCount < Self.channelChunkBytes {
            self.outbound.flushWhenChannelWritten = true
            return .none
        }
        self.outbound.flushWhenChannelWritten = false
        return .write(
            self.outbound.queue.takeAll(),
            mayWriteDirectly: self.outbound.descriptorIsOpen && self.outbound.writesInChannel == 0,
            writersWaiting: !self.outbound.writeWaiters.isEmpty
        )
    }

    /// Buffers are handed to the channel: until they are written, flushes write through the channel too.
    @inlinable
    package mutating func channelWriteStarted() {
        self.outbound.writesInChannel += 1
    }

    /// Buffers handed to the channel were written (or failed, the channel closing); returns whether to flush now
    /// what a flush left queued meanwhile.
    @inlinable
    package mutating func channelWriteCompleted() -> Bool {
        precondition(self.outbound.writesInChannel > 0, "a channel write completed that never started")
        self.outbound.writesInChannel -= 1
        guard self.outbound.writesInChannel == 0, self.outbound.flushWhenChannelWritten else { return false }
        self.outbound.flushWhenChannelWritten = false
        return true
    }

    /// The channel closed its socket: from now on nothing may write to the descriptor, whose number may be reused.
    @inlinable
    package mutating func socketClosed() {
        self.outbound.descriptorIsOpen = false
    }

    /// The channel's writability changed.
    @inlinable
    package mutating func writabilityChanged(_ isWritable: Bool) -> ResumeWritersAction {
        self.outbound.channelWritable = isWritable
        if isWritable { self.outbound.answersOwedUnread = 0 }
        return isWritable ? self.writersMayResume() : .none
    }

    /// A flush wrote what it took while senders waited: releases them if the queue is below its high watermark and
    /// the channel writable. (A sender that starts waiting after the flush waits for a fuller queue, which a later
    /// flush drains.)
    @inlinable
    package mutating func writersMayResume() -> ResumeWritersAction {
        guard !self.outbound.writeWaiters.isEmpty,
            self.outbound.isWritable(highWatermark: self.writeBufferHighWatermark)
        else { return .none }
        defer { self.outbound.writeWaiters = [] }
        return .resume(self.outbound.writeWaiters.map(\.waiter))
    }
}
