import NIOCore

/// Watches the writes and the half-close of a streamed EOF-style message (``Client/sendMessage(to:maximumAcknowledgementSize:connectTimeout:trustedServerUserIDs:body:)``)
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
    /// Bytes handed to the channel so far, wrapping.
    private var handedBytes = 0

    /// Bytes the socket took so far, wrapping: those handed to the channel less those it still buffers. On the event
    /// loop.
    func writtenBytes(_ channel: any Channel) -> Int {
        self.handedBytes &- ((try? channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let written = promise ?? context.eventLoop.makePromise(of: Void.self)
        self.handedBytes &+= self.unwrapOutboundIn(data).readableBytes
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
        // In the library's words, not SwiftNIO's (found by a review: `write(descriptor:pointer:size:): Broken pipe)`).
        if let writeFailure = self.writeFailure {
            return .eofNotDelivered(path: path, cause: errorText(writeFailure))
        }
        if let connectionError = self.connectionError {
            return .eofNotDelivered(path: path, cause: errorText(connectionError))
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
