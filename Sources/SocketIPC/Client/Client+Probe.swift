import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What ``Client/probe(_:timeout:)`` found listening on a socket file.
public struct ProbeResult: Sendable, Hashable {
    /// How the server answered the probe.
    public enum Style: Sendable, Hashable {
        /// A framed SocketIPC server: it sent its hello, which names the protocol version it speaks.
        case framed(protocolVersion: UInt8)
        /// The server read the probe's empty message to its end and closed the connection without a hello, after
        /// an acknowledgement of this many bytes (maybe none): an EOF-style server. (A framed server at its
        /// connection limit also closes at once without a hello.)
        case endOfFile(acknowledgementLength: Int)
        /// The server sent nothing and kept the connection open for the whole timeout: not a SocketIPC server.
        case silent
        /// The server sent bytes that are not a SocketIPC hello and kept the connection open: another protocol.
        case otherProtocol
    }

    /// How the server answered.
    public var style: Style
    /// The credentials of the server's process, where the platform tells them.
    public var peer: PeerCredentials?
}

extension Client {
    /// Finds out what listens on a socket file without sending it anything but an empty message.
    ///
    /// The probe connects, half-closes its side at once and reads. A framed server sends its hello as soon as a
    /// connection opens, so it is recognised whatever the probe sends; an EOF-style server reads an empty message
    /// (its handler runs with 0 bytes), answers and closes. Either way the probe returns within a round trip; only
    /// a server that says nothing makes it wait for `timeout`.
    /// - Parameters:
    ///   - path: The socket file's path.
    ///   - timeout: How long to wait for the server to connect and to answer.
    /// - Returns: How the server answered, and who it is.
    /// - Throws: ``SocketIPCError`` with code `invalidPath`, `connectionRefused` (nothing listens), `unauthorized`,
    ///   `timedOut` (the server's backlog stayed full) or `systemCall`.
    public static func probe(_ path: String, timeout: Duration = .seconds(2)) async throws -> ProbeResult {
        let socketPath = try SocketPath(path)
        let descriptor = try await SocketConnector.connect(to: socketPath, timeout: timeout)
        let peer = PeerCredentials.read(descriptor: descriptor)
        _ = shutdown(descriptor, Int32(SHUT_WR))
        let eventLoop = MultiThreadedEventLoopGroup.singleton.any()
        let answer = eventLoop.makePromise(of: ProbeResult.Style.self)
        do {
            _ = try await ClientBootstrap(group: eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ProbeHandler(answer: answer, timeout: timeout))
                    }
                }
                .withConnectedSocket(descriptor)
                .get()
        } catch {
            answer.fail(error)
            throw SocketIPCError(.systemCall, "could not watch the connection to \(socketPath): \(error)", path: path)
        }
        return ProbeResult(style: try await answer.futureResult.get(), peer: peer)
    }
}

/// Reads what a server sends a probe until its answer is clear, then closes.
private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let answer: EventLoopPromise<ProbeResult.Style>
    private let timeout: Duration
    /// The first bytes the server sent (enough to tell a hello), and how many it sent in all.
    private var firstBytes: [UInt8] = []
    private var byteCount = 0
    private var timer: Scheduled<Void>?

    init(answer: EventLoopPromise<ProbeResult.Style>, timeout: Duration) {
        self.answer = answer
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(self.timeout)) {
            self.answer.succeed(self.byteCount == 0 ? .silent : .otherProtocol)
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Self.unwrapInboundIn(data)
        self.byteCount += bytes.readableBytes
        if self.firstBytes.count < Hello.length {
            self.firstBytes += bytes.readableBytesView.prefix(Hello.length - self.firstBytes.count)
        }
        // The magic and the version byte are enough; bytes that are not the magic wait for the end of the stream,
        // which tells an EOF-style server's acknowledgement from another protocol.
        if self.firstBytes.count > 4, Self.startsWithMagic(self.firstBytes) {
            self.finish(.framed(protocolVersion: self.firstBytes[4]), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.endOfFile(acknowledgementLength: self.byteCount), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func finish(_ style: ProbeResult.Style, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.answer.succeed(style)  // only the first outcome counts: a completed promise ignores the rest
        context.close(promise: nil)
    }

    private static func startsWithMagic(_ bytes: [UInt8]) -> Bool {
        let magic = withUnsafeBytes(of: Hello.magic.bigEndian) { Array($0) }
        return bytes.count >= 4 && Array(bytes.prefix(4)) == magic
    }
}
