import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What ``Client/probe(_:timeout:trustedServerUserIDs:)`` found listening on a socket file.
public struct ProbeResult: Sendable, Hashable {
    /// How the server answered the probe.
    public enum Style: Sendable, Hashable {
        /// A framed SocketIPC server that accepts this process: it sent its hello, which names the protocol version
        /// it speaks, and no going-away frame after it.
        case framed(protocolVersion: UInt8)
        /// A framed SocketIPC server that does not serve this process: its hello came with a going-away frame
        /// before the probe said anything. `reason` is the going-away reason byte (`0x04`: its authorization policy
        /// refused this process; `0x00`: it is shutting down) and `message` the text that came with it.
        case framedRefused(protocolVersion: UInt8, reason: UInt8, message: String)
        /// An EOF-style server: it said nothing while the probe said nothing, then read the probe's empty message
        /// (after its half-close) to its end and closed, after an acknowledgement of this many bytes (maybe none).
        case endOfFile(acknowledgementLength: Int)
        /// The listener closed the connection at once, before the probe half-closed, without sending anything: a
        /// SocketIPC server that refused this process (an EOF-style server closes a refused peer without reading),
        /// is at its connection limit or is shutting down; or another program that does the same.
        case closedAtOnce
        /// The listener sent nothing and kept the connection open for the whole timeout: not a SocketIPC server (or
        /// one that never accepted the connection).
        case silent
        /// The listener sent bytes that are not a SocketIPC hello before it had any message from the probe, or kept
        /// the connection open after such bytes: another protocol (an HTTP responder, say).
        case otherProtocol
    }

    /// How the server answered.
    public var style: Style
    /// The credentials of the server's process, where the platform tells them.
    public var peer: PeerCredentials?

    /// Whether a live SocketIPC server (framed or EOF-style) answered and accepts this process.
    public var isServingCaller: Bool {
        switch self.style {
        case .framed, .endOfFile: true
        case .framedRefused, .closedAtOnce, .silent, .otherProtocol: false
        }
    }
}

extension Client {
    /// Finds out what listens on a socket file without sending it anything but an empty EOF-style message.
    ///
    /// The probe connects and first waits a short while (a quarter of `timeout`, at most 1 s) without sending
    /// anything. A framed server sends its hello at once (and a going-away frame right after it when it refuses
    /// this process); a listener that sends anything else, or closes without reading, shows itself then too. Only
    /// if nothing came does the probe half-close (an empty message): an EOF-style server reads it, may answer,
    /// and closes. A framed server or an EOF-style server is recognised within a round trip plus that wait; only a
    /// listener that says nothing makes the probe wait for all of `timeout`. (A program that greets every connection
    /// but takes longer than the wait to do it, as a loaded machine may make it, would be taken for an EOF-style
    /// server that acknowledged the empty message: the wait is what tells them apart.)
    /// - Parameters:
    ///   - path: The socket file's path.
    ///   - timeout: How long to wait for the server to accept and to answer; default 2 s.
    ///   - trustedServerUserIDs: The users a server at an abstract address, or at a path another user could have
    ///     made, may run as, as ``ClientConfiguration/trustedServerUserIDs``; `nil` (the default) for this process's
    ///     own user and root.
    /// - Returns: How the server answered, and who it is.
    /// - Throws: `SocketIPCError` with code `invalidPath`, `connectionRefused` (nothing listens), `unauthorized`
    ///   (the socket file's mode forbids connecting, or the server runs as a user not trusted there), `timedOut`
    ///   (the server's backlog stayed full) or `systemCall`.
    public static func probe(
        _ path: String,
        timeout: Duration = .seconds(2),
        trustedServerUserIDs: Set<UInt32>? = nil
    ) async throws -> ProbeResult {
        let socketPath = try SocketPath(path)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let descriptor = try await SocketConnector.connect(
            to: socketPath, timeout: timeout, trustedServerUserIDs: trustedServerUserIDs
        )
        let peer = PeerCredentials.read(descriptor: descriptor)
        // Long enough for a greeting program started per connection (socat's SYSTEM:) on a loaded machine.
        let window = min(timeout / 4, .seconds(1))
        let style: ProbeResult.Style
        do {
            style = try await NIOThreadPool.singleton.runIfActive {
                var exchange = ProbeExchange(descriptor: descriptor, deadline: deadline)
                return exchange.run(quietWindow: window)
            }
        } catch {
            close(descriptor)
            throw SocketIPCError(.systemCall, "could not probe \(socketPath): \(errorText(error))", path: path, cause: error)
        }
        close(descriptor)
        return ProbeResult(style: style, peer: peer)
    }
}

/// The probe's conversation, with blocking `poll` on a thread of NIO's pool: wait quietly, half-close, read.
private struct ProbeExchange {
    let descriptor: Int32
    let deadline: ContinuousClock.Instant
    /// What the listener sent (at most 256 bytes kept), and how many bytes in all.
    private var received = ByteBuffer()
    private var byteCount = 0

    init(descriptor: Int32, deadline: ContinuousClock.Instant) {
        self.descriptor = descriptor
        self.deadline = deadline
    }

    /// What one wait-and-read step saw.
    private enum Event {
        case bytes
        case endOfStream
        case failed
        case nothing
    }

    mutating func run(quietWindow: Duration) -> ProbeResult.Style {
        // 1. Say nothing: a framed server speaks first; so does another program that greets; a listener that closes
        //    now did not wait for any message.
        let quietUntil = min(ContinuousClock.now.advanced(by: quietWindow), self.deadline)
        switch self.waitAndRead(until: quietUntil) {
        case .bytes:
            return self.judgeSpeaker(halfClosed: false)
        case .endOfStream, .failed:
            return .closedAtOnce
        case .nothing:
            break
        }
        // 2. Send an empty EOF-style message: an EOF-style server reads it, may answer, and closes.
        _ = shutdown(self.descriptor, Int32(SHUT_WR))
        while true {
            switch self.waitAndRead(until: self.deadline) {
            case .bytes:
                if self.couldBeHello { return self.judgeSpeaker(halfClosed: true) }
            case .endOfStream:
                return .endOfFile(acknowledgementLength: self.byteCount)
            case .failed:
                return self.byteCount == 0 ? .closedAtOnce : .endOfFile(acknowledgementLength: self.byteCount)
            case .nothing:
                return self.byteCount == 0 ? .silent : .otherProtocol
            }
        }
    }

    /// Whether the bytes so far agree with the start of a hello.
    private var couldBeHello: Bool {
        let magic = withUnsafeBytes(of: Hello.magic.bigEndian) { Array($0) }
        let prefix = Array(self.received.readableBytesView.prefix(4))
        return prefix == Array(magic.prefix(prefix.count))
    }

    /// The listener sent bytes: a framed server's hello (and maybe a going-away frame), or something else.
    private mutating func judgeSpeaker(halfClosed: Bool) -> ProbeResult.Style {
        // Wait for the whole hello, then briefly for a going-away frame: a refusing framed server sends both in one
        // write, so they nearly always arrive together.
        while self.couldBeHello && self.received.readableBytes < Hello.length {
            guard case .bytes = self.waitAndRead(until: self.deadline) else { break }
        }
        guard self.couldBeHello, self.received.readableBytes >= Hello.length else {
            return halfClosed ? .endOfFile(acknowledgementLength: self.byteCount) : .otherProtocol
        }
        let goAwayWait = min(ContinuousClock.now.advanced(by: .milliseconds(20)), self.deadline)
        while self.received.readableBytes < Hello.length + 6 {
            guard case .bytes = self.waitAndRead(until: goAwayWait) else { break }
        }
        guard let answer = FramedServerRecognition.recognize(self.received) else { return .otherProtocol }
        if let reason = answer.goAwayReason,
            !halfClosed || reason == GoAwayReason.unauthorized.rawValue || reason == GoAwayReason.normal.rawValue
        {
            return .framedRefused(protocolVersion: answer.protocolVersion, reason: reason, message: answer.goAwayText ?? "")
        }
        return .framed(protocolVersion: answer.protocolVersion)
    }

    /// Waits until the socket is readable or `until` passes, then reads what is there.
    private mutating func waitAndRead(until: ContinuousClock.Instant) -> Event {
        while true {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { systemRead(self.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                self.byteCount += count
                if self.received.readableBytes < 256 { self.received.writeBytes(chunk[..<min(count, 256)]) }
                return .bytes
            }
            if count == 0 { return .endOfStream }
            let code = errno
            if code == EINTR { continue }
            guard code == EAGAIN || code == EWOULDBLOCK else { return .failed }
            let left = ContinuousClock.now.duration(to: until)
            guard left > .zero else { return .nothing }
            let milliseconds = Int32(clamping: max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
            if systemPoll(&entry, 1, milliseconds) < 0 && errno != EINTR { return .failed }
        }
    }
}
