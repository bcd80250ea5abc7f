import NIOCore
import Synchronization

extension Connection {
    /// Sends one-way messages in order, as that many ``send(_:)`` calls would, taking the connection's lock once for
    /// as many as fit rather than once per message: for a producer that has several messages at hand (the shape of
    /// `write(contentsOf:)` in grpc-swift's `RPCWriter` and SwiftNIO's `NIOAsyncChannelOutboundWriter`).
    ///
    /// Suspends, as ``send(_:)`` does, while the peer is not reading and the queue is above its high watermark, so
    /// the queue never holds much more than the watermark whatever the number of messages; returns once the last
    /// message is queued for the socket. An empty sequence sends nothing and returns at once.
    /// - Parameter messages: The payloads, each 0 bytes up to ``ConnectionOptions/maximumMessageSize``. An array (or
    ///   another collection with contiguous storage) is read where it lies; other sequences are read in chunks of 64.
    /// - Throws: `SocketIPCError` with code `messageTooLarge` at the first message above the maximum, once those before
    ///   it are queued (it and the ones after are not sent); or `connectionClosed` (or the reason the peer gave when it
    ///   went away) once the connection is closed.
    nonisolated(nonsending) public func send(contentsOf messages: some Sequence<ByteBuffer>) async throws {
        if try await self.sendContiguous(messages) { return }
        var chunk: [ByteBuffer] = []
        chunk.reserveCapacity(Self.sendChunkLength)
        for message in messages {
            chunk.append(message)
            if chunk.count == Self.sendChunkLength {
                _ = try await self.sendContiguous(chunk)
                chunk.removeAll(keepingCapacity: true)
            }
        }
        if !chunk.isEmpty { _ = try await self.sendContiguous(chunk) }
    }

    /// How many messages of a sequence without contiguous storage are gathered before they are queued.
    static var sendChunkLength: Int { 64 }

    /// Sends `messages` from their contiguous storage; returns `false`, having sent nothing, when they have none.
    nonisolated(nonsending) private func sendContiguous(_ messages: some Sequence<ByteBuffer>) async throws -> Bool {
        var offset = 0
        while true {
            let step = try messages.withContiguousStorageIfAvailable { all -> (queued: Int, mustWait: Bool) in
                try self.queueMessages(UnsafeBufferPointer(rebasing: all[offset...]))
            }
            guard let step else { return false }
            offset += step.queued
            if step.mustWait { try await self.waitUntilWritable() }
            if step.queued == 0 { return true }
        }
    }

    /// Queues one-way messages from the front of `messages` until the queue asks the sender to wait or to flush;
    /// returns how many were queued (0 only when `messages` is empty) and whether the sender must wait.
    func queueMessages(_ messages: UnsafeBufferPointer<ByteBuffer>) throws -> (queued: Int, mustWait: Bool) {
        guard !messages.isEmpty else { return (0, false) }
        // The messages up to the first one above the maximum are sent; that one fails the call.
        let maximum = self.options.effectiveMaximumMessageSize
        let sendable = messages.firstIndex { $0.readableBytes > maximum } ?? messages.count
        guard sendable > 0 else { throw self.tooLarge(messages[0].readableBytes, what: "message") }
        if self.descriptorPassing != nil {
            // Large payloads may go in shared memory: one at a time, as `send(_:)` queues them.
            for index in 0..<sendable {
                if try self.queueCheckedData(.message, id: 0, messages[index]) { return (index + 1, true) }
            }
            return (sendable, false)
        }
        // Only a sender on the event loop flushes early; elsewhere the scheduled flush runs beside it anyway.
        let flushThreshold = self.eventLoop.inEventLoop ? Self.earlyFlushThreshold : .max
        let pending = PendingMessages(UnsafeBufferPointer(rebasing: messages[..<sendable]))
        let (queued, action, flushEarly) = self.state.withLock {
            let (queued, action) = $0.enqueueMessages(
                pending.messages,
                spareBuffer: { self.spareBuffer() },
                flushThreshold: flushThreshold
            )
            return (queued, action, $0.shouldFlushEarly(threshold: flushThreshold))
        }
        switch action {
        case .fail(let error):
            throw error
        case .queued(let scheduleFlush, let mustWait):
            if scheduleFlush { self.scheduleFlush() }
            if flushEarly && !mustWait { self.flushEarlyIfOnEventLoop() }
            return (queued, mustWait)
        }
    }
}

/// Messages the lock's closure reads, synchronously, while the caller's storage is alive: `Sendable` so that the
/// pointer does not tie the connection's state to the caller's task (each `ByteBuffer` it reaches is `Sendable`).
private struct PendingMessages: @unchecked Sendable {
    let messages: UnsafeBufferPointer<ByteBuffer>

    init(_ messages: UnsafeBufferPointer<ByteBuffer>) {
        self.messages = messages
    }
}
