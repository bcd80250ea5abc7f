import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Collects an EOF-style message until the client half-closes, then runs the handler and writes its
/// acknowledgement. Bounded by the handler's maximum size: one byte more closes the connection; and by the time
/// limit: a message that has not ended (the client has not half-closed) within it closes the connection too.
///
/// A message over the maximum must leave bytes unread when the server closes, so that the client's read fails with
/// `ECONNRESET` instead of meeting a clean end-of-stream it would take for delivery: near the maximum, reads are
/// limited to the room left, and at the maximum the next byte is only peeked at (`MSG_PEEK`) on the socket.
///
/// The message is kept in one buffer that grows by doubling, never as the slices of the reads it came in (a slice
/// keeps its whole read buffer alive), so a peer that sends one byte per write costs at most about 2 bytes of memory
/// per byte.
final class EOFCollectingChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let kind: EOFMessageHandler.Kind
    private var messageContext: EOFMessageContext
    private let timeLimit: Duration
    private var message: ByteBuffer?
    private var done = false
    private var timer: Scheduled<Void>?
    /// The connection's socket, to peek at it once the message has reached the maximum.
    private let descriptor: Int32?
    /// The size reads are limited to now, or `nil` while they are not limited.
    private var readLimit: Int?
    /// Where a ``EOFMessageHandler/collecting(maximumSize:_:)`` handler runs, cancelled when the connection closes.
    private let tasks: ConnectionTaskSlot
    /// The connection's place in its server's admission count: a collecting handler holds it until it ends, since
    /// it goes on after its client closed.
    private let slot: ConnectionSlot?
    /// What the message gathered so far is charged to, until it is handed to the handler or dropped (a server's
    /// ``ServerConfiguration/maximumIncomingBytesPerUser``).
    private var incomingBytes: IncomingBytesCharge?

    init(
        kind: EOFMessageHandler.Kind,
        context: EOFMessageContext,
        initialBytes: ByteBuffer? = nil,
        timeLimit: Duration,
        descriptor: Int32? = nil,
        taskOwner: ConnectionTasks.Owner,
        slot: ConnectionSlot? = nil,
        incomingBytes: IncomingBytesCharge? = nil
    ) {
        self.slot = slot
        self.incomingBytes = incomingBytes
        self.descriptor = descriptor
        self.tasks = ConnectionTaskSlot(owner: taskOwner)
        self.message = initialBytes
        self.kind = kind
        self.messageContext = context
        self.timeLimit = timeLimit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if self.maximumSize < .max {
            try? context.channel.syncOptions?.setOption(ChannelOptions.maxMessagesPerRead, value: 1)
        }
        self.limitReads(context: context)
        let channel = context.channel
        let limit = self.timeLimit
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(limit)) {
            guard !self.done else { return }
            self.done = true
            self.message = nil
            // What was left of the time limit, to the millisecond (not 9.998733595000001 seconds).
            let shown = Duration.milliseconds(Int64((limit / .milliseconds(1)).rounded()))
            let error = SocketIPCError(
                .timedOut,
                "the message did not end (no half-close from the client) within the time limit of \(shown)"
            )
            self.messageContext.logger.debug("closing connection: message timed out", metadata: ["error": "\(errorText(error))"])
            self.messageContext.reportFailure(error)
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.incomingBytes?.release()
    }

    private var maximumSize: Int {
        switch self.kind {
        case .eventLoop(let maximumSize, _), .collecting(let maximumSize, _): maximumSize
        case .streaming: .max
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if self.messageContext.peer == nil {
            PeerCredentials.read(from: context.channel).assumeIsolated().whenSuccess { peer in
                self.messageContext.peer = peer
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        var chunk = Self.unwrapInboundIn(data)
        let size = (self.message?.readableBytes ?? 0) + chunk.readableBytes
        guard size <= self.maximumSize else {
            self.refuseTooLarge(context: context)
            return
        }
        if self.message == nil {
            self.message = chunk.keepingOnlyReadableBytes(allocator: context.channel.allocator)
        } else {
            self.message!.writeBuffer(&chunk)
        }
        if self.incomingBytes != nil, !self.chargeMessage(context: context) { return }
        // At the maximum: one more byte already waiting means the message is too large; close with it unread
        // (before NIO's next read in this same batch could take it).
        if size == self.maximumSize, let descriptor = self.descriptor {
            var byte: UInt8 = 0
            if recv(descriptor, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 1 {
                self.refuseTooLarge(context: context)
                return
            }
        }
        self.limitReads(context: context)
    }

    /// Limits the next reads to the room left below the maximum once it is less than the largest read, so that a
    /// read never takes bytes past the maximum out of the socket.
    private func limitReads(context: ChannelHandlerContext) {
        let room = self.maximumSize - (self.message?.readableBytes ?? 0)
        // A power of two: a read buffer's capacity is rounded up to one, and a read fills the whole buffer. Each read
        // gets a new buffer (ExactReadAllocator): NIO's pool would reuse a larger one.
        let limit: Int? = room >= 1024 * 1024 ? nil : 1 << (Int.bitWidth - 1 - max(1, min(room, 64 * 1024)).leadingZeroBitCount)
        guard let limit, limit != self.readLimit else { return }
        self.readLimit = limit
        try? context.channel.syncOptions?.setOption(
            ChannelOptions.recvAllocator,
            value: ExactReadAllocator(capacity: limit)
        )
    }

    /// Charges the message gathered so far to the peer's user; closes the connection, as for a message too large,
    /// when the user's account cannot take it.
    /// - Returns: Whether the message may go on.
    private func chargeMessage(context: ChannelHandlerContext) -> Bool {
        guard var charge = self.incomingBytes else { return true }
        let size = self.message?.readableBytes ?? 0
        let fits = charge.keep(self.message?.storageCapacity ?? 0)
        self.incomingBytes = charge
        guard !fits else { return true }
        self.done = true
        self.timer?.cancel()
        self.message = nil
        self.incomingBytes?.release()
        let error = charge.accounts.refusal(of: size, user: charge.user)
        self.messageContext.logger.debug("closing connection: its user's incoming bytes", metadata: ["error": "\(errorText(error))"])
        self.messageContext.reportFailure(error)
        context.close(promise: nil)
        return false
    }

    private func refuseTooLarge(context: ChannelHandlerContext) {
        self.done = true
        self.timer?.cancel()
        self.message = nil
        let error = SocketIPCError(.messageTooLarge, "the message exceeds the maximum of \(self.maximumSize) bytes")
        self.messageContext.logger.debug("closing connection: message too large", metadata: ["error": "\(errorText(error))"])
        self.messageContext.reportFailure(error)
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .some(ChannelEvent.inputClosed) = event as? ChannelEvent, !self.done else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        self.done = true
        self.timer?.cancel()
        let message = self.message ?? context.channel.allocator.buffer(capacity: 0)
        self.message = nil
        // Received whole: what holds it from now on is the handler's to count.
        self.incomingBytes?.release()
        let messageContext = self.messageContext
        switch self.kind {
        case .eventLoop(_, let body):
            do {
                let acknowledgement = try body(message, messageContext)
                Self.finish(channel: context.channel, acknowledgement: acknowledgement, timeLimit: self.timeLimit)
            } catch {
                messageContext.handlerFailed(error)
                context.close(promise: nil)
            }
        case .collecting(_, let body):
            let channel = context.channel
            let timeLimit = self.timeLimit
            let slot = self.slot
            // The handler goes on if its client closes: until it ends it counts against the connection limits.
            slot?.hold()
            self.tasks.get().run {
                defer { slot?.release() }
                do {
                    Self.finish(channel: channel, acknowledgement: try await body(message, messageContext), timeLimit: timeLimit)
                } catch {
                    messageContext.handlerFailed(error)
                    channel.close(promise: nil)
                }
            }
        case .streaming:
            preconditionFailure("streaming messages use EOFStreamingChannelHandler")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A handler still running finishes: the message arrived whole (a client such as socat closes soon after
        // its half-close without waiting for an acknowledgement), and handling it is the point. The server's grace
        // period still ends it.
        self.tasks.close(cancellingJobs: false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.messageContext.logger.debug("connection error", metadata: ["error": "\(errorText(error))"])
        if !self.done {
            self.done = true
            self.timer?.cancel()
            self.messageContext.reportFailure(SocketIPCError(.connectionClosed, "the connection failed: \(errorText(error))", cause: error))
        }
        context.close(promise: nil)
    }

    /// Writes the acknowledgement, if any, and closes. A client that reads nothing of it for `timeLimit` is closed on
    /// (it would otherwise keep its connection, and its slot, for as long as it likes); one that reads slowly but
    /// steadily gets all of it: the limit counts from the last progress, each ``acknowledgementChunkSize`` bytes
    /// written, not from the start. (The EOF style cannot tell a client that an acknowledgement was cut short: it ends
    /// at the close. Only a client that stopped reading for the whole limit can see that.)
    static func finish(channel: any Channel, acknowledgement: ByteBuffer?, timeLimit: Duration) {
        guard let acknowledgement else {
            channel.close(promise: nil)
            return
        }
        if channel.eventLoop.inEventLoop {
            Self.write(acknowledgement, on: channel, timeLimit: timeLimit)
        } else {
            channel.eventLoop.execute { Self.write(acknowledgement, on: channel, timeLimit: timeLimit) }
        }
    }

    /// How much of an acknowledgement is written at a time; each piece written is progress that restarts the time
    /// limit: 64 KiB.
    static let acknowledgementChunkSize = 64 * 1024

    /// On the channel's event loop: writes `acknowledgement` a chunk at a time, then closes.
    private static func write(_ acknowledgement: ByteBuffer, on channel: any Channel, timeLimit: Duration) {
        var rest = acknowledgement
        let chunk = rest.readSlice(length: min(rest.readableBytes, Self.acknowledgementChunkSize)) ?? rest
        var pending = true
        let written = channel.writeAndFlush(chunk).assumeIsolated()
        written.whenComplete { result in
            pending = false
            if case .success = result, rest.readableBytes > 0 {
                Self.write(rest, on: channel, timeLimit: timeLimit)
            } else {
                channel.close(promise: nil)
            }
        }
        // Usually the acknowledgement fits in the socket buffer and is written at once: no timer then.
        if pending {
            let timer = channel.eventLoop.assumeIsolated().scheduleTask(in: .init(timeLimit)) {
                channel.close(promise: nil)
            }
            written.whenComplete { _ in timer.cancel() }
        }
    }
}

extension ByteBuffer {
    /// This buffer, or a copy of its readable bytes in a buffer of their size when it holds much more storage than
    /// it has readable bytes (as a read's buffer does after a short read): what a handler keeps must cost about what
    /// it holds.
    func keepingOnlyReadableBytes(allocator: ByteBufferAllocator) -> ByteBuffer {
        guard self.capacity > 2 * self.readableBytes + 64 else { return self }
        var copy = allocator.buffer(capacity: self.readableBytes)
        copy.writeImmutableBuffer(self)
        return copy
    }
}
