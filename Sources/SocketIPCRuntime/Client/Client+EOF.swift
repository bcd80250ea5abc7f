import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension Client {
    /// Sends `message` as one EOF-style message (connect, write, half-close) and returns the server's
    /// acknowledgement: every byte it wrote before closing, empty if it wrote none.
    ///
    /// The call returns only when the whole message was written, the write side shut down, and the server then
    /// closed its side cleanly (end-of-stream): a server that closes the connection while the message is still
    /// being written, or with bytes of it unread (the kernel then reports `ECONNRESET`), makes it throw, never
    /// report delivery.
    ///
    /// A small message to a prompt server is sent and acknowledged with plain system calls on the calling thread,
    /// which waits up to 1 ms for the acknowledgement to start (never on an event loop's thread: see
    /// ``withEventLoopExecutor(_:)``). Anything slower continues without blocking the caller's thread: on Linux, once
    /// the whole message is written, one thread of the process waits for the acknowledgements of all such exchanges
    /// (with `epoll`); a message still being written continues on an event loop. No write raises `SIGPIPE`.
    /// - Parameters:
    ///   - message: The message, of any size.
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    ///   - connectTimeout: How long to keep trying while the server's listen backlog is full; default 10 seconds.
    ///   - timeout: How long the exchange may take once connected, writing the message (to a server that stops
    ///     reading) and waiting for the acknowledgement and end-of-stream (from a server that never closes); `nil`,
    ///     the default, for no limit, as with a framed request's `ConnectionOptions/requestTimeout`. Cancelling the
    ///     calling task ends the exchange either way.
    ///   - trustedServerUserIDs: The user ids the server may run as where another user could have taken its address
    ///     first, as ``ClientConfiguration/trustedServerUserIDs``; `nil`, the default, trusts this process's own user
    ///     and root.
    /// - Returns: The acknowledgement.
    /// - Throws: `CancellationError` when the calling task is cancelled (the connection is closed; whether the server
    ///   got the message is unknown). `SocketIPCError` with code `invalidPath`, `connectionRefused`, `unauthorized`
    ///   (the socket file's mode forbids connecting), `timedOut` (the server's backlog stayed full for
    ///   `connectTimeout`, or the exchange took longer than `timeout`: the connection is then closed and the
    ///   delivery unknown), `messageTooLarge` (the
    ///   acknowledgement), `connectionClosed` (the server closed the connection before the whole message was
    ///   delivered: the message is over its maximum size, its authorization policy refused this process, or it is
    ///   at its connection limit or shutting down), `protocolViolation` (the server is a framed SocketIPC server,
    ///   not an EOF-style one) or `systemCall`. A server that reads the whole message and closes without an
    ///   acknowledgement (its handler failed or returned none) gives an empty acknowledgement, not an error.
    public static func sendMessage(
        _ message: ByteBuffer,
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024,
        connectTimeout: Duration = .seconds(10),
        timeout: Duration? = nil,
        trustedServerUserIDs: Set<UInt32>? = nil
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(
            to: socketPath,
            timeout: connectTimeout,
            trustedServerUserIDs: trustedServerUserIDs
        )
        let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
        // Optimistically do the whole exchange with plain system calls on this thread: a small message fits in the
        // socket buffer, and a server that answers at once is answered within the short wait below. Anything that
        // would block goes to an event loop instead.
        // Never wait on an event loop's thread: there, go straight to the event loop's own machinery.
        let currentEventLoop = MultiThreadedEventLoopGroup.currentEventLoop
        var attempt = EOFExchange(
            descriptor: descriptor,
            message: message,
            maximumAcknowledgement: maximumAcknowledgementSize,
            path: path
        )
        switch attempt.runWithoutBlocking(waitingForAcknowledgementUpTo: currentEventLoop == nil ? 1 : 0) {
        case .finished(let acknowledgement):
            return acknowledgement
        case .failed(let error):
            throw error
        case .wouldBlock:
            break
        }
        #if os(Linux)
        // The whole message is out: only the acknowledgement is left to read, which the process-wide waiter does
        // far more cheaply than a channel set up for this one connection.
        if attempt.halfClosed,
            let outcome = await EOFAcknowledgementWaiter.shared.acknowledgement(
                of: attempt,
                timeout: deadline.map { max(.zero, $0 - ContinuousClock.now) },
                timedOut: SocketIPCError(
                    .timedOut,
                    "the server did not acknowledge the message within \(timeout!)",
                    path: path
                )
            )
        {
            switch outcome {
            case .finished(let acknowledgement):
                return acknowledgement
            case .failed(let error):
                if error.code == .cancelled { throw CancellationError() }
                throw error
            case .wouldBlock:
                preconditionFailure("the acknowledgement waiter resumes only finished exchanges")
            }
        }
        #endif
        let unsent = attempt.halfClosed ? nil : attempt.unsent
        let receivedSoFar = attempt.received
        let eventLoop = currentEventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
        let acknowledgement = eventLoop.makePromise(of: ByteBuffer.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            EOFClientChannelHandler(
                                message: unsent,
                                received: receivedSoFar,
                                maximumAcknowledgementSize: maximumAcknowledgementSize,
                                path: path,
                                acknowledgement: acknowledgement
                            )
                        )
                    }
                }
                .withConnectedSocket(descriptor)
                .get()
        } catch {
            acknowledgement.fail(error)
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(errorText(error))", path: path, cause: error)
        }
        // Giving up fails the promise first, so that the end-of-stream of the close that follows is no delivery.
        let timer = deadline.map { deadline in
            eventLoop.scheduleTask(in: TimeAmount(max(.zero, deadline - ContinuousClock.now))) {
                acknowledgement.fail(SocketIPCError(
                    .timedOut,
                    "the exchange with the server did not end within \(timeout!)",
                    path: path
                ))
                channel.close(promise: nil)
            }
        }
        defer { timer?.cancel() }
        return try await withTaskCancellationHandler {
            try await acknowledgement.futureResult.get()
        } onCancel: {
            eventLoop.execute {
                acknowledgement.fail(CancellationError())
                channel.close(promise: nil)
            }
        }
    }

    /// Sends one EOF-style message that `body` writes in pieces, with backpressure, then half-closes and returns the
    /// server's acknowledgement. Use it for messages too large to hold in memory.
    ///
    /// As with ``sendMessage(_:to:maximumAcknowledgementSize:connectTimeout:timeout:trustedServerUserIDs:)``, the call returns only when every byte was
    /// written, the write side shut down and the server then closed cleanly.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    ///   - connectTimeout: How long to keep trying while the server's listen backlog is full; default 10 seconds.
    ///   - trustedServerUserIDs: As ``ClientConfiguration/trustedServerUserIDs``; `nil`, the default, trusts this
    ///     process's own user and root.
    ///   - stallTimeout: How long the server may take nothing more of the message while some of it waits (in the
    ///     connection's buffer, or unread in the socket) before the exchange ends with `timedOut`: the socket takes
    ///     none of the bytes written and the server reads none of those the socket holds. A server that reads slowly
    ///     is not stalled, nor is one waiting for `body`'s next piece; one that stops is found one to one and a half
    ///     `stallTimeout`s after it took the last byte. As TCP's user timeout (`TCP_USER_TIMEOUT`, RFC 5482), which
    ///     Unix domain sockets do not have. `nil`, the default, for no limit. The wait for the acknowledgement once
    ///     the server has read the whole message is not covered (cancel the task for that).
    ///   - body: Writes the message with the ``EOFMessageWriter`` it is given.
    /// - Returns: The acknowledgement.
    /// - Throws: `SocketIPCError` with the codes of
    ///   ``sendMessage(_:to:maximumAcknowledgementSize:connectTimeout:timeout:trustedServerUserIDs:)`` (`timedOut`
    ///   after `stallTimeout`), `CancellationError` when the calling task is cancelled while waiting for the
    ///   acknowledgement, or what `body` throws. For a time limit, cancel the task.
    public static func sendMessage(
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024,
        connectTimeout: Duration = .seconds(10),
        trustedServerUserIDs: Set<UInt32>? = nil,
        stallTimeout: Duration? = nil,
        body: (EOFMessageWriter) async throws -> Void
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(
            to: socketPath,
            timeout: connectTimeout,
            trustedServerUserIDs: trustedServerUserIDs
        )
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        let tracker: NIOLoopBound<EOFDeliveryTracker>
        do {
            (channel, tracker) = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .withConnectedSocket(descriptor) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let tracker = EOFDeliveryTracker()
                        try channel.pipeline.syncOperations.addHandler(tracker)
                        let asyncChannel = try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return (asyncChannel, NIOLoopBound(tracker, eventLoop: channel.eventLoop))
                    }
                }
        } catch {
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(errorText(error))", path: path, cause: error)
        }
        let eventLoop = channel.channel.eventLoop
        let stalled = stallTimeout.map { Self.closeWhenStalled(channel.channel, tracker: tracker, descriptor: descriptor, after: $0) }
        defer { stalled?.watch.cancel() }
        /// The error of a server that took nothing more of the message for `stallTimeout`, once the watch closed the
        /// channel.
        func stallError() -> SocketIPCError? {
            guard let stalled, stalled.happened.withLockedValue({ $0 }) else { return nil }
            return SocketIPCError(
                .timedOut,
                "the server at \(path) took nothing more of the message for \(stallTimeout!): it stopped reading (what "
                    + "it read may reach it as a whole, shorter message: an EOF-style server cannot tell a message cut "
                    + "short, PROTOCOL.md)",
                path: path
            )
        }
        return try await channel.executeThenClose { inbound, outbound in
            var acknowledgement = ByteBuffer()
            /// Reads what the server sent until it closes (or `maximumAcknowledgementSize`); the error it ended
            /// with, if any.
            func readAcknowledgement() async -> SocketIPCError? {
                do {
                    for try await var chunk in inbound {
                        guard acknowledgement.readableBytes + chunk.readableBytes <= maximumAcknowledgementSize else {
                            return SocketIPCError(
                                .messageTooLarge,
                                "the acknowledgement exceeds the maximum of \(maximumAcknowledgementSize) bytes",
                                path: path
                            )
                        }
                        acknowledgement.writeBuffer(&chunk)
                    }
                    return nil
                } catch let error as SocketIPCError {
                    return error
                } catch {
                    return .eofNotDelivered(path: path, cause: "\(errorText(error))", underlying: error)
                }
            }
            do {
                try await body(EOFMessageWriter(outbound: outbound, path: path))
            } catch let error where stallError() != nil {
                _ = error
                throw stallError()!
            } catch let error as SocketIPCError where error.code == .connectionClosed && !channel.channel.isActive {
                // The server closed on the message: what it sent before (already read) may say why.
                _ = await readAcknowledgement()
                throw FramedServerRecognition.error(for: acknowledgement, path: path) ?? error
            }
            outbound.finish()
            // The watch goes on until the server has read the whole message (found by a review: a 5-byte message to
            // a server that read nothing waited for good once the body had returned); with nothing left unread it
            // counts no stall, so the wait for the acknowledgement has no limit.
            let failure = await readAcknowledgement()
            if let stall = stallError() { throw stall }
            if let framed = FramedServerRecognition.error(for: acknowledgement, path: path) { throw framed }
            // A cancelled task ends the read early, without the server's end-of-stream: that is a cancellation, not
            // a failed delivery. A delivery completed before the cancellation is still reported.
            if let failure {
                try Task.checkCancellation()
                throw failure
            }
            if let undelivered = try await eventLoop.submit({ tracker.value.undelivered(path: path) }).get() {
                try Task.checkCancellation()
                throw undelivered
            }
            return acknowledgement
        }
    }

    /// Closes `channel` when, over a whole `limit` while bytes of the message were waiting (in NIO's buffer or unread
    /// in the socket), the socket took none of them and the server read none of those the socket holds (`TIOCOUTQ` on
    /// `descriptor`, Linux): what ``Connection`` calls a stall in `waitUntilWritten()`. A pause of the message's
    /// source leaves nothing waiting, and is no stall (found by a review: input that paused for 20 s cut off a server
    /// that had read all of it). `happened` says whether it closed the channel.
    private static func closeWhenStalled(
        _ channel: any Channel,
        tracker: NIOLoopBound<EOFDeliveryTracker>,
        descriptor: Int32,
        after limit: Duration
    ) -> (watch: RepeatedTask, happened: NIOLockedValueBox<Bool>) {
        let happened = NIOLockedValueBox(false)
        /// What moved at the last look that saw a change, and when; `nil` progress when nothing waited.
        let last = NIOLockedValueBox<(progress: [Int]?, since: NIODeadline)>((nil, .now()))
        /// What moves while the server reads, or `nil` when nothing of the message waits. On the event loop.
        @Sendable func progress() -> [Int]? {
            guard channel.isActive else { return nil }
            let buffered = (try? channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
            let unread = SocketQueue.unreadByPeer(descriptor)
            guard buffered > 0 || unread > 0 else { return nil }
            return [tracker.value.writtenBytes(channel), unread]
        }
        // Looks four times per `limit`, so that a server that stops reading is found between one and one and a half
        // `limit`s after it took the last byte (a review: with a look per `limit`, the first one, before the message
        // was written, saw nothing waiting, and a server that read nothing was found after two).
        let look = TimeAmount.nanoseconds(max(1, TimeAmount(limit).nanoseconds / 4))
        let watch = channel.eventLoop.scheduleRepeatedTask(initialDelay: look, delay: look) { task in
            guard channel.isActive else {
                task.cancel()
                return
            }
            let now = progress()
            let time = NIODeadline.now()
            let stalledSince: NIODeadline? = last.withLockedValue { last in
                if last.progress != now {
                    last = (now, time)
                    return nil
                }
                return now == nil ? nil : last.since
            }
            guard let stalledSince, time - stalledSince >= TimeAmount(limit) else { return }
            happened.withLockedValue { $0 = true }
            task.cancel()
            channel.close(promise: nil)
        }
        return (watch, happened)
    }
}
