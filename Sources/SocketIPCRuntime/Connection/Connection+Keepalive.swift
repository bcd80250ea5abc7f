import NIOCore
import SocketIPCCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
        self.calls.readWatch.end()
    }

    /// Answers the peer's ping `id` with a pong.
    func pingReceived(id: UInt32) {
        _ = try? self.queueCallFrameKind(.pong, id: id)
    }

    /// The peer answered ping `id`: the next ping in one interval, or the end of a wait for the peer to read.
    func pongReceived(id: UInt32) {
        if let waiter = self.calls.readConfirmations.withLock({ $0.waiting.removeValue(forKey: id) }) {
            waiter.continuation.resume()
            return
        }
        if id < 1 << 31 { self.failSkippedReadConfirmations(beforeKeepalivePing: id) }
        let timer: Scheduled<Void>? = self.calls.keepalive.withLock { keepalive in
            guard keepalive.outstanding == id else { return nil }
            keepalive.outstanding = nil
            return keepalive.timer.take()
        }
        guard let timer else { return }
        timer.cancel()
        self.calls.readWatch.end()
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
        // Written now, so that the ping's own bytes do not count as the peer's progress when the timeout passes (a
        // review: a call whose request waited for credit was given up after two keepalive timeouts, not one).
        self.flushPendingWrites(force: true)
        let progress = self.keepaliveProgress()
        self.calls.readWatch.begin(unread: progress[1])
        self.waitForPong(id, progressBefore: progress)
    }

    /// How many of this side's bytes the socket has taken so far, wrapping: what flushes took from the connection's
    /// queue, less what the channel still buffers of it. On the event loop.
    func writtenBytes() -> Int {
        let taken = self.state.withLock { $0.takenBytes }
        let buffered = (try? self.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
        return taken &- buffered
    }

    /// Bytes the socket took that the peer has not read yet (`TIOCOUTQ`, Linux; with a relay, those of the pair and
    /// of the peer's socket), 0 where it cannot tell. On the event loop, while the channel is open (its descriptor's
    /// number is its own until then).
    func unreadBytes() -> Int {
        guard let descriptor = self.socketDescriptor, self.channel.isActive else { return 0 }
        return SocketQueue.unreadByPeer(descriptor) + (self.descriptorPassing?.relay.unreadByPeer() ?? 0)
    }

    /// Bytes the peer holds unread, to the byte (``SocketQueue/unreadInPeer(_:)``; with a relay, those of the pair and
    /// of the peer's socket); -1 where that cannot be told. On the event loop, while the channel is open.
    func unreadInPeer() -> Int {
        guard let descriptor = self.socketDescriptor, self.channel.isActive,
            let unread = SocketQueue.unreadInPeer(descriptor)
        else { return -1 }
        guard let relay = self.descriptorPassing?.relay else { return unread }
        return relay.unreadInPeer().map { unread + $0 } ?? -1
    }

    /// What moves while the peer reads: the bytes the socket took, and those it holds unread (``unreadBytes()``).
    func progress() -> [Int] { [self.writtenBytes(), self.unreadBytes()] }

    /// ``progress()`` for a keepalive ping and its timeout, and the bytes the peer holds unread to the byte
    /// (``unreadInPeer()``), asked only while the socket holds some unread: the kernel finds the peer's socket by
    /// scanning every Unix socket of the namespace, up to a millisecond with 20,000 (found by a review), so idle
    /// connections, most of a busy server's, do not ask; -1 where not asked or unknown.
    func keepaliveProgress() -> [Int] {
        let progress = self.progress()
        return progress + [progress[1] > 0 ? self.unreadInPeer() : -1]
    }

    /// Whether the peer read any of this side's bytes between two ``progress()`` samples, as far as the two tell:
    /// the kernel's count of what it holds unread (`TIOCOUTQ` of a Unix socket: the memory of its queued buffers,
    /// each at least as large as the bytes in it) grew by less than what the socket took meanwhile. A peer that
    /// reads nothing frees no buffer, so its count grows by at least what this side writes; `progress() != before`
    /// would take this side's own writes for the peer's reading (found by a review: a client that kept calling a
    /// server stopped with SIGSTOP never found it frozen, and a call without a deadline waited as long as the server
    /// was stopped). A peer that reads less than this side writes in small frames can look as if it read nothing
    /// here; ``KeepaliveReadWatch`` sees it read. Where the unread bytes cannot be told (0), this side's writes count
    /// as the peer's reading.
    ///
    /// Where the peer's unread bytes are known to the byte (the third sample, sock_diag's), they grow by exactly what
    /// the socket took while the peer reads nothing, and by less once it reads any, also part of a buffer: so a peer
    /// reading a large message slowly is alive, however long each buffer takes it (found by a review: one reading
    /// 1 KiB a second was cut off as frozen, the count of whole buffers unchanged for 32 s).
    static func peerRead(between before: [Int], and now: [Int]) -> Bool {
        let taken = now[0] &- before[0]
        if before.count > 2, now.count > 2, before[2] >= 0, now[2] >= 0, now[2] - before[2] < taken { return true }
        let grown = now[1] - before[1]
        return grown < taken
    }

    /// Closes the connection with `peerNotResponding` unless the pong of ping `id` comes within the keepalive timeout,
    /// or the peer went on reading meanwhile (``peerRead(between:and:)``): a ping queued behind a large
    /// message reaches a peer that reads it slowly only after it, and that peer is alive (found by reviews: a send of
    /// 8 MB to a server reading 100 KB/s was cut off as frozen, also once the ping had reached the socket with 2 MB of
    /// the message still unread before it). A frozen peer reads nothing, however much this side goes on writing into
    /// its socket's buffer (found by a review: a client that kept calling a server stopped with SIGSTOP never found
    /// it frozen, when the socket's taking its new calls counted as progress, and a call without a deadline waited
    /// as long as the server was stopped).
    private func waitForPong(_ id: UInt32, progressBefore: [Int]) {
        let timeout = self.options.keepaliveTimeout
        let channel = self.channel
        let timer = self.eventLoop.scheduleTask(in: .init(timeout)) {
            guard self.calls.keepalive.withLock({ $0.outstanding == id }) else { return }
            let progress = self.keepaliveProgress()
            let watch = self.calls.readWatch
            if Self.peerRead(between: progressBefore, and: progress) || watch.peerRead(unreadNow: progress[1]) {
                watch.restart(unread: progress[1])
                self.waitForPong(id, progressBefore: progress)
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

    /// Waits until the peer has read everything this side sent before: sends a ping and waits for its pong, which
    /// the peer sends once it has read the frames before the ping (it reads them in order, PROTOCOL.md), so that a
    /// one-way message sent before is known to have been read (handed to the peer's handler, unless the peer is
    /// paused at its limit of requests in progress and holds it back) or refused (the peer closed the connection with
    /// a going-away frame that says why: too large, a protocol violation). Wayland's `wl_display_roundtrip` is the
    /// same idea.
    /// - Returns: `true` once the pong came; `false` at once when the peer does not speak calls (a version-1 peer
    ///   without ping and pong), which tells nothing.
    /// - Throws: The connection's ``closeReason`` (or `connectionClosed`) when it closes first; `CancellationError`;
    ///   `peerNotResponding` when the peer answers a keepalive ping sent after this one but not this one. A frozen
    ///   peer is found by the keepalive (``ConnectionOptions/keepaliveInterval``), which closes the connection with
    ///   `peerNotResponding`; without a keepalive, a peer that never answers keeps the wait until the task is
    ///   cancelled or the connection closes.
    package func waitUntilPeerHasRead() async throws -> Bool {
        guard self.peerSpeaksCalls else { return false }
        let id = self.calls.readConfirmations.withLock { confirmations in
            defer { confirmations.next = max(confirmations.next &+ 1, 1 << 31) }
            return confirmations.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let refusal = self.calls.readConfirmations.withLock { confirmations -> (any Error)? in
                    if let closed = confirmations.closed { return closed }
                    // Cancelled before the wait began: the cancellation handler found nothing to end (found by a
                    // review: the wait went on until the peer closed).
                    if Task.isCancelled { return CancellationError() }
                    confirmations.waiting[id] = .init(continuation: continuation)
                    return nil
                }
                if let refusal {
                    continuation.resume(throwing: refusal)
                    return
                }
                do {
                    try self.queueCallFrameKind(.ping, id: id)
                    // Read once the ping is queued: a keepalive ping sent meanwhile went before it, and its pong
                    // must not count as one to a later ping.
                    let keepalivePings = self.calls.keepalive.withLock { $0.sent }
                    self.calls.readConfirmations.withLock { $0.waiting[id]?.keepalivePingsBefore = keepalivePings }
                } catch {
                    self.calls.readConfirmations.withLock { $0.waiting.removeValue(forKey: id) }?
                        .continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            self.calls.readConfirmations.withLock { $0.waiting.removeValue(forKey: id) }?
                .continuation.resume(throwing: CancellationError())
        }
        return true
    }

    /// The peer answered keepalive ping `id`: the waits whose pings went before it and are still unanswered were
    /// skipped (pongs come in the order of their pings), so they fail, instead of lasting as long as the peer answers
    /// the keepalive (found by a review: a `send` that a server answered so waited for good).
    private func failSkippedReadConfirmations(beforeKeepalivePing id: UInt32) {
        let skipped = self.calls.readConfirmations.withLock { confirmations -> [ConnectionCalls.ReadConfirmations.Waiter] in
            let ids = confirmations.waiting.filter { $0.value.keepalivePingsBefore < id }.map(\.key)
            return ids.compactMap { confirmations.waiting.removeValue(forKey: $0) }
        }
        guard !skipped.isEmpty else { return }
        let error = SocketIPCError(
            .peerNotResponding,
            "the peer answered a later ping but not the one sent to learn whether it had read what came before"
        )
        for waiter in skipped { waiter.continuation.resume(throwing: error) }
    }

    /// Fails the waits for the peer to read with what the connection closed with; when it closes.
    func failReadConfirmations() {
        let error: any Error = self.closeReason ?? self.closeError ?? SocketIPCError.closed
        let waiters = self.calls.readConfirmations.withLock { confirmations in
            confirmations.closed = error
            defer { confirmations.waiting = [:] }
            return Array(confirmations.waiting.values)
        }
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
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
