import NIOCore
import SocketIPCCore
import Synchronization

// Keepalive (frames 0x0B ping and 0x0C pong), as gRPC's: every `keepaliveInterval` this side pings a peer that
// speaks calls, and closes the connection with `peerNotResponding` if the pong has not come within
// `keepaliveTimeout`. A frozen peer (stopped with SIGSTOP, deadlocked) keeps its socket open and is found only so.
extension Connection {
    /// Starts pinging, once the peer's hello said it speaks calls; on the event loop.
    func startKeepalive() {
        guard let interval = self.options.keepaliveInterval, self.peerSpeaksCalls else { return }
        self.scheduleNextPing(after: interval)
    }

    /// Stops the keepalive's timer; when the connection closes.
    func stopKeepalive() {
        self.calls.keepalive.withLock { $0.timer.take() }?.cancel()
    }

    /// Answers the peer's ping `id` with a pong.
    func pingReceived(id: UInt32) {
        _ = try? self.queueCallFrameKind(.pong, id: id)
    }

    /// The peer answered ping `id`: the next ping in one interval.
    func pongReceived(id: UInt32) {
        let timer: Scheduled<Void>? = self.calls.keepalive.withLock { keepalive in
            guard keepalive.outstanding == id else { return nil }
            keepalive.outstanding = nil
            return keepalive.timer.take()
        }
        guard let timer else { return }
        timer.cancel()
        if let interval = self.options.keepaliveInterval { self.scheduleNextPing(after: interval) }
    }

    private func scheduleNextPing(after interval: Duration) {
        let timer = self.eventLoop.scheduleTask(in: .init(interval)) { self.sendKeepalivePing() }
        self.calls.keepalive.withLock { $0.timer = timer }
    }

    private func sendKeepalivePing() {
        guard self.isOpen else { return }
        let id = self.calls.keepalive.withLock { keepalive in
            keepalive.sent &+= 1
            keepalive.outstanding = keepalive.sent
            return keepalive.sent
        }
        guard (try? self.queueCallFrameKind(.ping, id: id)) != nil else { return }
        // The socket has taken the ping once it has taken every byte queued so far, the ping's included.
        let pingWritten = self.state.withLock { $0.takenBytes &+ $0.queuedBytes }
        self.waitForPong(id, writtenWhenSent: pingWritten, writtenBefore: self.writtenBytes())
    }

    /// How many of this side's bytes the socket has taken so far, wrapping: what flushes took from the connection's
    /// queue, less what the channel still buffers of it. On the event loop.
    func writtenBytes() -> Int {
        let taken = self.state.withLock { $0.takenBytes }
        let buffered = (try? self.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
        return taken &- buffered
    }

    /// Closes the connection with `peerNotResponding` unless the pong of ping `id` comes within the keepalive timeout,
    /// or the ping is still queued behind bytes the socket went on taking meanwhile (`writtenBefore` then, the ping
    /// taken at `writtenWhenSent`): a ping queued behind a large message reaches a peer that reads it slowly only after
    /// it, and that peer is alive (found by a review: a send of 8 MB to a server reading 100 KB/s was cut off as
    /// frozen). A frozen peer reads nothing: its socket's buffer fills, and the bytes taken stop growing.
    private func waitForPong(_ id: UInt32, writtenWhenSent: Int, writtenBefore: Int) {
        let timeout = self.options.keepaliveTimeout
        let channel = self.channel
        let timer = self.eventLoop.scheduleTask(in: .init(timeout)) {
            guard self.calls.keepalive.withLock({ $0.outstanding == id }) else { return }
            let written = self.writtenBytes()
            if written &- writtenWhenSent < 0 && written != writtenBefore {
                self.waitForPong(id, writtenWhenSent: writtenWhenSent, writtenBefore: written)
                return
            }
            self.logger.notice("the peer did not answer a keepalive ping", metadata: ["timeout": "\(timeout)"])
            channel.pipeline.fireErrorCaught(
                SocketIPCError(
                    .peerNotResponding,
                    "the peer did not answer a keepalive ping within \(timeout): it is frozen or unreachable"
                )
            )
        }
        self.calls.keepalive.withLock { $0.timer = timer }
    }

    /// Queues an empty frame of `kind` with `id` (a ping or a pong) and schedules its flush.
    private func queueCallFrameKind(_ kind: FrameKind, id: UInt32) throws {
        let action = self.state.withLock {
            $0.enqueue(kind, id: id, payload: ByteBuffer(), spareBuffer: { self.spareBuffer() })
        }
        switch action {
        case .fail(let error): throw error
        case .queued(let scheduleFlush, _): if scheduleFlush { self.scheduleFlush() }
        }
    }
}
