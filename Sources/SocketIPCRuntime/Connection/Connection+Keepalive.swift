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
        let timeout = self.options.keepaliveTimeout
        let channel = self.channel
        let timer = self.eventLoop.scheduleTask(in: .init(timeout)) {
            guard self.calls.keepalive.withLock({ $0.outstanding == id }) else { return }
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
