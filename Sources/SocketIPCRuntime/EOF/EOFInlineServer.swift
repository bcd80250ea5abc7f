import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Serves an EOF-style connection on the accepting thread when its whole message is already there.
///
/// A client of the EOF style usually connects, writes and half-closes before the server gets to `accept`, so by
/// then the message and its EOF wait in the socket. For an ``EOFMessageHandler/onEventLoop(maximumSize:_:)`` handler
/// (synchronous, never blocking) the server then reads the message, runs the handler and writes the
/// acknowledgement right away: a few system calls and no channel, instead of handing the socket to an event loop.
/// When the message is not complete yet, the socket goes to an event loop with the bytes read so far, where the
/// message's time limit runs (the accepting thread never waits for a peer). Every write here is a `send` that cannot
/// raise `SIGPIPE` (``SocketSend``): a client that vanishes before its acknowledgement costs only that connection.
enum EOFInlineServer {
    enum Outcome {
        /// The connection was served (or refused) and closed.
        case served
        /// The message is not complete: continue on an event loop, after these bytes.
        case handOff(ByteBuffer)
    }

    /// Serves `descriptor` here when its whole message is already there; `peer` is what the server read at the accept
    /// (`SO_PEERCRED`), not read again.
    static func serve(
        _ descriptor: Int32,
        peer: PeerCredentials?,
        maximumSize: Int,
        body: @Sendable (ByteBuffer, EOFMessageContext) throws -> ByteBuffer?,
        connectionID: UInt64,
        logger: Logger,
        timeLimit: Duration = .seconds(10),
        reportFailure: @Sendable (SocketIPCError) -> Void = { _ in }
    ) -> Outcome {
        // (The server has applied its authorization policy already, before handing the connection here.)
        // Reads at most `maximumSize` bytes; then one byte more is only peeked at, so that a message over the
        // maximum leaves bytes unread and the client's read fails with `ECONNRESET` instead of a clean end.
        // The buffer grows by doubling: at most about 2 bytes of memory per byte received.
        var message = ByteBufferAllocator().buffer(capacity: 1024)
        reading: while true {
            let room = maximumSize - message.readableBytes
            let count: Int
            if room > 0 {
                message.reserveCapacity(minimumWritableBytes: min(64 * 1024, max(1024, message.readableBytes)))
                count = message.withUnsafeMutableWritableBytes {
                    systemRead(descriptor, $0.baseAddress, min($0.count, room))
                }
            } else {
                var byte: UInt8 = 0
                count = recv(descriptor, &byte, 1, Int32(MSG_PEEK))
            }
            switch count {
            case 0:
                break reading  // EOF: the whole message is here
            case 1... where room > 0:
                message.moveWriterIndex(forwardBy: count)
            case 1...:
                logger.debug(
                    "closing connection: message too large",
                    metadata: ["socketipc.connection": "\(connectionID)", "maximum": "\(maximumSize)"]
                )
                reportFailure(SocketIPCError(.messageTooLarge, "the message exceeds the maximum of \(maximumSize) bytes"))
                close(descriptor)
                return .served
            default:
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: return .handOff(message)
                default:
                    reportFailure(SocketIPCError(.connectionClosed, "the connection failed: \(errnoDescription(errno))"))
                    close(descriptor)
                    return .served
                }
            }
        }

        let context = EOFMessageContext(connectionID: connectionID, peer: peer, logger: logger)
        let acknowledgement: ByteBuffer?
        do {
            acknowledgement = try body(message, context)
        } catch {
            logger.debug("message handler failed", metadata: ["socketipc.connection": "\(connectionID)", "error": "\(error)"])
            reportFailure(error as? SocketIPCError ?? SocketIPCError(.remoteError, "the message handler failed: \(error)", cause: error))
            close(descriptor)
            return .served
        }
        guard var remaining = acknowledgement, remaining.readableBytes > 0 else {
            close(descriptor)
            return .served
        }
        switch SocketSend.sendAll(descriptor, from: &remaining) {
        case .done:
            break
        case .wouldBlock:
            // The client is not reading fast enough: let an event loop write the rest without blocking us.
            Self.finishOnEventLoop(descriptor, remaining: remaining, timeLimit: timeLimit)
            return .served
        case .failed(let code):
            // The client went away before reading its acknowledgement: its loss, not the server's.
            logger.debug(
                "could not write the acknowledgement",
                metadata: ["socketipc.connection": "\(connectionID)", "error": "\(errnoDescription(code))"]
            )
        }
        close(descriptor)
        return .served
    }

    private static func finishOnEventLoop(_ descriptor: Int32, remaining: ByteBuffer, timeLimit: Duration) {
        // The client has half-closed: without remote half-closure the channel would close at that EOF, before
        // the rest of the acknowledgement is written.
        ChannelSetupQueue.shared.enqueue { eventLoop in
            ClientBootstrap(group: eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .withConnectedSocket(descriptor)
                .whenSuccess { channel in
                    EOFCollectingChannelHandler.finish(channel: channel, acknowledgement: remaining, timeLimit: timeLimit)
                }
        }
    }
}
