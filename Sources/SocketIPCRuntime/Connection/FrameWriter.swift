import NIOCore
import SocketIPCCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How a connection's frames reach the peer: the one seam every byte a ``Connection`` writes goes through.
///
/// A flush hands the writer what it took from the queue (``OutboundQueue/Batch``); the writer writes as much of it
/// as it can at once without the channel and returns the rest, which the connection then writes with
/// ``writeThroughChannel(_:)``. ``SocketFrameWriter`` writes straight to the socket on Linux; a transport that must
/// see every byte (TLS in the pipeline) would return everything, and one that sends descriptors along would write
/// them with `sendmsg(2)` here, without a change to ``Connection``.
protocol FrameWriter: Sendable {
    /// Writes `batch`'s buffers in order, as far as they go at once without the channel. Runs on the event loop.
    /// - Parameters:
    ///   - batch: What the flush took from the queue.
    ///   - mayWriteDirectly: Whether bytes may bypass the channel: `false` while the channel holds writes of its own
    ///     (bytes must leave in order) or after it closed its socket (the descriptor number may belong to another
    ///     file by then).
    /// - Returns: What was not written, in order, for ``writeThroughChannel(_:)`` (empty if everything was), and
    ///   whether the socket refused it for good (`EPIPE`, `ECONNRESET`): then none of it will reach the peer.
    func write(_ batch: OutboundQueue.Batch, mayWriteDirectly: Bool) -> (unwritten: [ByteBuffer], refused: Bool)

    /// Writes `buffers` through the channel's pipeline, in order, and flushes. Runs on the event loop.
    /// - Returns: A future that completes once the last buffer is written, or fails when the channel cannot write.
    func writeThroughChannel(_ buffers: some Collection<ByteBuffer>) -> EventLoopFuture<Void>
}

/// The ``FrameWriter`` of a plain Unix-domain socket.
///
/// On Linux, while the channel holds no writes of its own, a flush goes straight to the socket with `send(2)` and
/// `MSG_NOSIGNAL` (``SocketSend``), which skips the channel's pipeline and write queue on the common path; whatever
/// the socket does not take at once (`EAGAIN`, or an error, which the channel then meets again and reports) goes
/// through the channel. Elsewhere everything goes through the channel.
struct SocketFrameWriter: FrameWriter {
    /// The connection's channel.
    let channel: any Channel
    /// The channel's socket, when known; without it every write goes through the channel.
    let descriptor: Int32?

    func write(_ batch: OutboundQueue.Batch, mayWriteDirectly: Bool) -> (unwritten: [ByteBuffer], refused: Bool) {
        #if os(Linux)
        // A closing channel has closed its socket before it reports the close: then its number may belong to
        // another socket already (NIO marks the channel inactive first, and fails its writes before channelInactive).
        var writingDirectly = mayWriteDirectly && self.channel.isActive ? self.descriptor : nil
        #else
        var writingDirectly: Int32? = nil
        #endif
        // The descriptor is NIO's: writing to it is safe only on the channel's event loop, between its own writes.
        if writingDirectly != nil { self.channel.eventLoop.preconditionInEventLoop() }
        // What the socket did not take at once, in order; allocated only then.
        var unwritten: [ByteBuffer] = []
        var refused = false
        for var buffer in batch.earlier {
            if let descriptor = writingDirectly {
                switch Self.writeWithoutBlocking(&buffer, to: descriptor) {
                case .done: continue
                case .wouldBlock: break
                case .failed(let code): refused = Self.refusesForGood(code)
                }
            }
            writingDirectly = nil
            unwritten.append(buffer)
        }
        if var buffer = batch.tail {
            if let descriptor = writingDirectly {
                switch Self.writeWithoutBlocking(&buffer, to: descriptor) {
                case .done: break
                case .wouldBlock: unwritten.append(buffer)
                case .failed(let code):
                    refused = Self.refusesForGood(code)
                    unwritten.append(buffer)
                }
            } else {
                unwritten.append(buffer)
            }
        }
        return (unwritten, refused)
    }

    /// Whether a send that failed with `code` means that nothing more will reach the peer on this socket: it closed
    /// (`EPIPE`, `ECONNRESET`) or shut its reading side down (`EPIPE`). Not a passing lack of memory (`ENOBUFS`,
    /// `ENOMEM`), after which the channel's own write may still succeed.
    static func refusesForGood(_ code: Int32) -> Bool {
        code == EPIPE || code == ECONNRESET || code == ENOTCONN
    }

    func writeThroughChannel(_ buffers: some Collection<ByteBuffer>) -> EventLoopFuture<Void> {
        let written = self.channel.eventLoop.makePromise(of: Void.self)
        var index = buffers.startIndex
        guard index != buffers.endIndex else {
            written.succeed()
            return written.futureResult
        }
        while index != buffers.endIndex {
            let next = buffers.index(after: index)
            self.channel.write(buffers[index], promise: next == buffers.endIndex ? written : nil)
            index = next
        }
        self.channel.flush()
        return written.futureResult
    }

    /// Writes as much of `buffer` to `descriptor` as the socket takes now (`send(2)`, never raising `SIGPIPE`).
    /// - Returns: How far it got; unless `done`, `buffer` holds the rest, which goes through the channel (after an
    ///   error, the channel meets it again and reports it).
    @inline(__always)
    static func writeWithoutBlocking(_ buffer: inout ByteBuffer, to descriptor: Int32) -> SocketSend.Outcome {
        #if os(Linux)
        return SocketSend.sendAll(descriptor, from: &buffer)
        #else
        return .wouldBlock
        #endif
    }
}
