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
    /// - Returns: The acknowledgement.
    /// - Throws: ``SocketIPCError`` with code `invalidPath`, `connectionRefused`, `unauthorized` (the socket file's
    ///   mode forbids connecting), `timedOut` (the server's backlog stayed full for 10 s), `messageTooLarge` (the
    ///   acknowledgement), `connectionClosed` (the server closed the connection before the whole message was
    ///   delivered: the message is over its maximum size, its authorization policy refused this process, or it is
    ///   at its connection limit or shutting down), `protocolViolation` (the server is a framed SocketIPC server,
    ///   not an EOF-style one) or `systemCall`. A server that reads the whole message and closes without an
    ///   acknowledgement (its handler failed or returned none) gives an empty acknowledgement, not an error.
    public static func sendMessage(
        _ message: ByteBuffer,
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: .seconds(10))
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
        if attempt.halfClosed, let outcome = await EOFAcknowledgementWaiter.shared.acknowledgement(of: attempt) {
            switch outcome {
            case .finished(let acknowledgement):
                return acknowledgement
            case .failed(let error):
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
        do {
            _ = try await ClientBootstrap(group: eventLoop)
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
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(error)", path: path)
        }
        return try await acknowledgement.futureResult.get()
    }

    /// Sends one EOF-style message that `body` writes in pieces, with backpressure, then half-closes and returns the
    /// server's acknowledgement. Use it for messages too large to hold in memory.
    ///
    /// As with ``sendMessage(_:to:maximumAcknowledgementSize:)``, the call returns only when every byte was
    /// written, the write side shut down and the server then closed cleanly.
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    ///   - body: Writes the message with the ``EOFMessageWriter`` it is given.
    /// - Returns: The acknowledgement.
    /// - Throws: ``SocketIPCError`` with the codes of ``sendMessage(_:to:maximumAcknowledgementSize:)``, or what
    ///   `body` throws.
    public static func sendMessage(
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024,
        body: (EOFMessageWriter) async throws -> Void
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: .seconds(10))
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
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(error)", path: path)
        }
        let eventLoop = channel.channel.eventLoop
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
                    return .eofNotDelivered(path: path, cause: "\(error)")
                }
            }
            do {
                try await body(EOFMessageWriter(outbound: outbound, path: path))
            } catch let error as SocketIPCError where error.code == .connectionClosed && !channel.channel.isActive {
                // The server closed on the message: what it sent before (already read) may say why.
                _ = await readAcknowledgement()
                throw FramedServerRecognition.error(for: acknowledgement, path: path) ?? error
            }
            outbound.finish()
            let failure = await readAcknowledgement()
            if let framed = FramedServerRecognition.error(for: acknowledgement, path: path) { throw framed }
            if let failure { throw failure }
            if let undelivered = try await eventLoop.submit({ tracker.value.undelivered(path: path) }).get() {
                throw undelivered
            }
            return acknowledgement
        }
    }
}

extension Client {
    /// Runs `body` on one of SocketIPC's event loops, as its task executor preference.
    ///
    /// Connections that `body` opens then live on the same thread as `body`, so sends, replies and EOF-style
    /// exchanges need no hand-over between threads. `body` must not block its thread.
    public static func withEventLoopExecutor<Result: Sendable>(
        _ body: () async throws -> Result
    ) async rethrows -> Result {
        let executor = EventLoopTaskExecutor.shared(for: MultiThreadedEventLoopGroup.singleton.any())
        return try await withTaskExecutorPreference(executor) { try await body() }
    }
}

/// Writes the pieces of one EOF-style message; each ``write(_:)`` waits while the server is not reading.
public struct EOFMessageWriter: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    /// The server's socket path, for error messages.
    let path: String

    /// Writes the next piece of the message.
    /// - Throws: ``SocketIPCError`` with code `connectionClosed` when the server has closed the connection (for
    ///   example because the message is over its maximum size, or its authorization policy refused this process).
    public func write(_ bytes: ByteBuffer) async throws {
        do {
            try await self.outbound.write(bytes)
        } catch let error as SocketIPCError {
            throw error
        } catch {
            throw SocketIPCError.eofNotDelivered(path: self.path, cause: "\(error)")
        }
    }
}

/// Writes the message, half-closes, and collects the acknowledgement until EOF.
///
/// Only an end-of-stream from the server after the whole message was written and the write side shut down counts
/// as delivery; a failed write, a reset or a close before that fails the exchange.
final class EOFClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What is left to write; `nil` when the whole message was written and the write side shut down already.
    private let message: ByteBuffer?
    private let maximumAcknowledgementSize: Int
    private let path: String
    private let promise: EventLoopPromise<ByteBuffer>
    private var received: ByteBuffer?
    /// Whether the whole message is written and the write side shut down.
    private var sent: Bool
    private var finished = false

    init(
        message: ByteBuffer?,
        received: ByteBuffer? = nil,
        maximumAcknowledgementSize: Int,
        path: String,
        acknowledgement: EventLoopPromise<ByteBuffer>
    ) {
        self.message = message
        self.sent = message == nil
        self.received = received.flatMap { $0.readableBytes > 0 ? $0 : nil }
        self.maximumAcknowledgementSize = maximumAcknowledgementSize
        self.path = path
        self.promise = acknowledgement
    }

    func channelActive(context: ChannelHandlerContext) {
        if let message = self.message {
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(Self.wrapOutboundOut(message), promise: written)
            written.futureResult.assumeIsolated().whenComplete { result in
                switch result {
                case .success:
                    self.sent = true
                    context.close(mode: .output, promise: nil)
                case .failure(let error):
                    self.fail(cause: "\(error)", context: context)
                }
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.finished else { return }
        var chunk = Self.unwrapInboundIn(data)
        if (self.received?.readableBytes ?? 0) + chunk.readableBytes > self.maximumAcknowledgementSize {
            self.finish(
                .failure(
                    SocketIPCError(
                        .messageTooLarge,
                        "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgementSize) bytes",
                        path: self.path
                    )
                ),
                context: context
            )
            return
        }
        if self.received == nil { self.received = chunk } else { self.received!.writeBuffer(&chunk) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.endOfStream(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Once the write side is shut down, NIO reports the server's end-of-stream by closing the channel (without
        // an error: a reset or a failed write arrives first, through `errorCaught` or the write's promise).
        self.endOfStream(context: context)
        context.fireChannelInactive()
    }

    /// The server closed its side: delivery if the whole message was written and the write side shut down first.
    private func endOfStream(context: ChannelHandlerContext) {
        if let framed = FramedServerRecognition.error(for: self.received, path: self.path) {
            self.finish(.failure(framed), context: context)
        } else if self.sent {
            self.finish(.success(self.received ?? ByteBuffer()), context: context)
        } else {
            self.fail(cause: "it closed while the message was being written", context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? IOError {
            self.fail(cause: errnoDescription(error.errnoCode), context: context)
        } else {
            self.fail(cause: "\(error)", context: context)
        }
    }

    /// Fails the exchange: as with a framed server if what it sent says so, else as not delivered.
    private func fail(cause: String, context: ChannelHandlerContext) {
        let error =
            FramedServerRecognition.error(for: self.received, path: self.path)
            ?? .eofNotDelivered(path: self.path, cause: cause)
        self.finish(.failure(error), context: context)
    }

    private func finish(_ result: Result<ByteBuffer, SocketIPCError>, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.received = nil
        self.promise.completeWith(result.mapError { $0 as any Error })
        context.close(promise: nil)
    }
}

/// Watches the writes and the half-close of a streamed EOF-style message (``Client/sendMessage(to:maximumAcknowledgementSize:body:)``)
/// to tell delivery from a server that closed on the message.
final class EOFDeliveryTracker: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var writeFailure: (any Error)?
    private var connectionError: (any Error)?
    private var halfClosed = false
    private var endOfStreamAfterHalfClose = false
    private var endOfStreamBeforeHalfClose = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let written = promise ?? context.eventLoop.makePromise(of: Void.self)
        written.futureResult.assumeIsolated().whenFailure { error in
            if self.writeFailure == nil { self.writeFailure = error }
        }
        context.write(data, promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output { self.halfClosed = true }
        context.close(mode: mode, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent { self.endOfStream() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Once the write side is shut down, NIO reports the server's end-of-stream by closing the channel; a reset
        // arrives first through `errorCaught`.
        if self.connectionError == nil { self.endOfStream() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.connectionError == nil { self.connectionError = error }
        context.fireErrorCaught(error)
    }

    private func endOfStream() {
        guard !self.endOfStreamAfterHalfClose, !self.endOfStreamBeforeHalfClose else { return }
        if self.halfClosed {
            self.endOfStreamAfterHalfClose = true
        } else {
            self.endOfStreamBeforeHalfClose = true
        }
    }

    /// The error to throw when the message was not delivered, or `nil` when it was: every write succeeded, the
    /// write side was shut down, and then the server closed its side.
    func undelivered(path: String) -> SocketIPCError? {
        if let writeFailure = self.writeFailure { return .eofNotDelivered(path: path, cause: "\(writeFailure)") }
        if let connectionError = self.connectionError {
            return .eofNotDelivered(path: path, cause: "\(connectionError)")
        }
        if self.endOfStreamBeforeHalfClose {
            return .eofNotDelivered(path: path, cause: "it closed while the message was being written")
        }
        if !self.endOfStreamAfterHalfClose {
            return .eofNotDelivered(path: path, cause: "the connection closed before the server's end-of-stream")
        }
        return nil
    }
}

/// One EOF-style exchange done with non-blocking system calls on the calling thread, as far as it goes without
/// blocking: write the message, shut down the write side, read the acknowledgement until EOF.
struct EOFExchange {
    enum Outcome {
        /// Done: the socket is closed.
        case finished(ByteBuffer)
        /// Failed: the socket is closed.
        case failed(SocketIPCError)
        /// Continue on an event loop, from ``unsent`` and ``received``.
        case wouldBlock
    }

    let descriptor: Int32
    private(set) var unsent: ByteBuffer
    private(set) var received = ByteBuffer()
    private(set) var halfClosed = false
    let maximumAcknowledgement: Int
    /// The server's socket path, for error messages.
    let path: String

    init(descriptor: Int32, message: ByteBuffer, maximumAcknowledgement: Int, path: String) {
        self.descriptor = descriptor
        self.unsent = message
        self.maximumAcknowledgement = maximumAcknowledgement
        self.path = path
    }

    /// Goes as far as it can; waits at most `milliseconds` (in `poll`) for the acknowledgement to start.
    mutating func runWithoutBlocking(waitingForAcknowledgementUpTo milliseconds: Int32) -> Outcome {
        if self.unsent.readableBytes > 0 {
            switch SocketSend.sendAll(self.descriptor, from: &self.unsent) {
            case .done: break
            case .wouldBlock: return .wouldBlock
            case .failed(let code): return self.failUndelivered(errno: code)
            }
        }
        if !self.halfClosed {
            shutdown(self.descriptor, Int32(SHUT_WR))
            self.halfClosed = true
        }
        var waited = false
        while true {
            self.received.reserveCapacity(minimumWritableBytes: 1024)
            let count = self.received.withUnsafeMutableWritableBytes { systemRead(self.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                self.received.moveWriterIndex(forwardBy: count)
                if self.received.readableBytes > self.maximumAcknowledgement {
                    return self.fail(
                        SocketIPCError(
                            .messageTooLarge,
                            "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgement) bytes",
                            path: self.path
                        )
                    )
                }
            } else if count == 0 {
                // A clean end-of-stream after the whole message and the half-close: delivered, unless the bytes
                // are a framed server's hello.
                if let framed = FramedServerRecognition.error(for: self.received, path: self.path) {
                    return self.fail(framed)
                }
                close(self.descriptor)
                return .finished(self.received)
            } else if errno == EINTR {
                continue
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) && !waited && milliseconds > 0 {
                var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
                waited = true
                if systemPoll(&entry, 1, milliseconds) <= 0 { return .wouldBlock }
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return .wouldBlock
            } else {
                return self.failUndelivered(errno: errno)
            }
        }
    }

    /// Fails the exchange whose connection failed with `code` before the server's end-of-stream: as with a framed
    /// server if the bytes it sent (read now, as far as they are there) say so, else as not delivered.
    mutating func failUndelivered(errno code: Int32) -> Outcome {
        while self.received.readableBytes < 4096 {
            self.received.reserveCapacity(minimumWritableBytes: 1024)
            let count = self.received.withUnsafeMutableWritableBytes { systemRead(self.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                self.received.moveWriterIndex(forwardBy: count)
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return self.fail(
            FramedServerRecognition.error(for: self.received, path: self.path)
                ?? .eofNotDelivered(path: self.path, cause: errnoDescription(code))
        )
    }

    /// Closes the socket and reports `error`.
    func fail(_ error: SocketIPCError) -> Outcome {
        close(self.descriptor)
        return .failed(error)
    }
}

extension SocketIPCError {
    /// The error of an EOF-style exchange whose message did not reach the server: the connection failed or the
    /// server closed it (`cause` says how) before the whole message was written and the server's end-of-stream read.
    static func eofNotDelivered(path: String, cause: String) -> SocketIPCError {
        SocketIPCError(
            .connectionClosed,
            "the server at \(path) closed the connection before the whole message was delivered (\(cause)); likely "
                + "causes: the message is over the server's maximum size, its authorization policy refused this "
                + "process, or it is at its connection limit or shutting down",
            path: path
        )
    }
}
