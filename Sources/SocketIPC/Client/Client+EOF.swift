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
    /// A small message to a prompt server is sent and acknowledged with plain system calls on the calling thread,
    /// which waits up to 1 ms for the acknowledgement to start (never on an event loop's thread: see
    /// ``withEventLoopExecutor(_:)``). Anything slower continues without blocking the caller's thread: on Linux, once
    /// the whole message is written, one thread of the process waits for the acknowledgements of all such exchanges
    /// (with `epoll`); a message still being written continues on an event loop.
    /// - Parameters:
    ///   - message: The message, of any size.
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    /// - Returns: The acknowledgement.
    /// - Throws: ``SocketIPCError`` with code `invalidPath`, `connectionRefused`, `messageTooLarge` (the
    ///   acknowledgement), `connectionClosed` (the connection failed before EOF, as when the server closed it
    ///   without reading the message: its authorization policy refused this process, or the message is over its
    ///   maximum) or `systemCall`. A server that reads the message and closes without an acknowledgement (its
    ///   handler failed or returned none) gives an empty acknowledgement, not an error.
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
        var attempt = EOFExchange(descriptor: descriptor, message: message, maximumAcknowledgement: maximumAcknowledgementSize)
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
    /// - Parameters:
    ///   - path: The server's socket path.
    ///   - maximumAcknowledgementSize: The most acknowledgement bytes accepted; default 16 MiB.
    ///   - body: Writes the message with the ``EOFMessageWriter`` it is given.
    /// - Returns: The acknowledgement.
    public static func sendMessage(
        to path: String,
        maximumAcknowledgementSize: Int = 16 * 1024 * 1024,
        body: (EOFMessageWriter) async throws -> Void
    ) async throws -> ByteBuffer {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: .seconds(10))
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .withConnectedSocket(descriptor) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                    }
                }
        } catch {
            throw SocketIPCError(.systemCall, "could not set up the connection to \(socketPath): \(error)", path: path)
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await body(EOFMessageWriter(outbound: outbound))
            outbound.finish()
            var acknowledgement = ByteBuffer()
            do {
                for try await var chunk in inbound {
                    guard acknowledgement.readableBytes + chunk.readableBytes <= maximumAcknowledgementSize else {
                        throw SocketIPCError(
                            .messageTooLarge,
                            "the acknowledgement exceeds the maximum of \(maximumAcknowledgementSize) bytes"
                        )
                    }
                    acknowledgement.writeBuffer(&chunk)
                }
            } catch let error as SocketIPCError {
                throw error
            } catch {
                throw SocketIPCError(.connectionClosed, "the connection failed before the server's EOF: \(error)", path: path)
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

    /// Writes the next piece of the message.
    /// - Throws: ``SocketIPCError`` with code `connectionClosed` when the server has closed the connection (for
    ///   example because the message is over its maximum size).
    public func write(_ bytes: ByteBuffer) async throws {
        do {
            try await self.outbound.write(bytes)
        } catch let error as SocketIPCError {
            throw error
        } catch {
            throw SocketIPCError(
                .connectionClosed,
                "the server closed the connection before the whole message was sent (is it over the server's "
                    + "maximum size?): \(error)"
            )
        }
    }
}

/// Writes the message, half-closes, and collects the acknowledgement until EOF.
final class EOFClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What is left to write; `nil` when the whole message was written and the write side shut down already.
    private let message: ByteBuffer?
    private let maximumAcknowledgementSize: Int
    private let promise: EventLoopPromise<ByteBuffer>
    private var received: ByteBuffer?
    private var finished = false

    init(
        message: ByteBuffer?,
        received: ByteBuffer? = nil,
        maximumAcknowledgementSize: Int,
        acknowledgement: EventLoopPromise<ByteBuffer>
    ) {
        self.message = message
        self.received = received.flatMap { $0.readableBytes > 0 ? $0 : nil }
        self.maximumAcknowledgementSize = maximumAcknowledgementSize
        self.promise = acknowledgement
    }

    func channelActive(context: ChannelHandlerContext) {
        if let message = self.message {
            context.write(Self.wrapOutboundOut(message), promise: nil)
            context.flush()
            context.close(mode: .output, promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = Self.unwrapInboundIn(data)
        if (self.received?.readableBytes ?? 0) + chunk.readableBytes > self.maximumAcknowledgementSize {
            self.finish(
                .failure(SocketIPCError(.messageTooLarge, "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgementSize) bytes")),
                context: context
            )
            return
        }
        if self.received == nil { self.received = chunk } else { self.received!.writeBuffer(&chunk) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
            self.finish(.success(self.received ?? ByteBuffer()), context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.success(self.received ?? ByteBuffer()), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let failure: SocketIPCError
        if let error = error as? IOError {
            failure = .eofExchangeFailed(errno: error.errnoCode)
        } else {
            failure = SocketIPCError(.connectionClosed, "the connection failed before the server's EOF: \(error)")
        }
        self.finish(.failure(failure), context: context)
    }

    private func finish(_ result: Result<ByteBuffer, SocketIPCError>, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.received = nil
        self.promise.completeWith(result.mapError { $0 as any Error })
        context.close(promise: nil)
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

    init(descriptor: Int32, message: ByteBuffer, maximumAcknowledgement: Int) {
        self.descriptor = descriptor
        self.unsent = message
        self.maximumAcknowledgement = maximumAcknowledgement
    }

    /// Goes as far as it can; waits at most `milliseconds` (in `poll`) for the acknowledgement to start.
    mutating func runWithoutBlocking(waitingForAcknowledgementUpTo milliseconds: Int32) -> Outcome {
        while self.unsent.readableBytes > 0 {
            let written = self.unsent.withUnsafeReadableBytes { systemWrite(self.descriptor, $0.baseAddress, $0.count) }
            if written > 0 {
                self.unsent.moveReaderIndex(forwardBy: written)
            } else if written < 0 && errno == EINTR {
                continue
            } else if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return .wouldBlock
            } else {
                return self.fail(SocketIPCError(.connectionClosed, "the server closed the connection before the whole message was sent"))
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
                        SocketIPCError(.messageTooLarge, "the acknowledgement exceeds the maximum of \(self.maximumAcknowledgement) bytes")
                    )
                }
            } else if count == 0 {
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
                return self.fail(.eofExchangeFailed(errno: errno))
            }
        }
    }

    /// Closes the socket and reports `error`.
    func fail(_ error: SocketIPCError) -> Outcome {
        close(self.descriptor)
        return .failed(error)
    }
}

extension SocketIPCError {
    /// The error of an EOF-style exchange whose connection failed (system error `code`) before the server's EOF.
    static func eofExchangeFailed(errno code: Int32) -> SocketIPCError {
        guard code != ECONNRESET else {
            // The server closed its socket with bytes of the message still unread.
            return SocketIPCError(
                .connectionClosed,
                "the server closed the connection without reading the whole message (its authorization policy "
                    + "refused this process, or the message exceeds its maximum size)"
            )
        }
        return SocketIPCError(.connectionClosed, "the connection failed before the server's EOF: \(errnoDescription(code))")
    }
}
