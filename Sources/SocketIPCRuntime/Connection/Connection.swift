import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

/// One end of a framed SocketIPC connection, on the client or the server: send one-way messages, make requests,
/// and close.
///
/// A connection is safe to use from any task. Writes from many tasks are coalesced into as few system calls as
/// possible; a writer waits (``send(_:)`` suspends) while the peer does not read, so memory per connection stays
/// bounded by ``ConnectionOptions/writeBufferHighWatermark`` plus the frames being written.
///
/// ```swift
/// try await connection.send(ByteBuffer(string: "note"))            // one-way
/// let reply = try await connection.request(ByteBuffer(string: "ping"))  // request and wait for the reply
/// ```
public final class Connection: Sendable {
    /// A number that identifies this connection in logs, unique within the process.
    public let id: UInt64
    /// The credentials of the process on the other end, read from the socket when the connection opened.
    public let peer: PeerCredentials?
    /// The peer process, held by a pidfd taken when it connected, when ``ConnectionOptions/holdsPeerProcess`` is set
    /// and the kernel gives one (Linux 6.5 and later); `nil` otherwise.
    public let peerProcess: PeerProcess?
    /// The logger of this connection, with `socketipc.connection` (and the peer's credentials) as metadata.
    public var logger: Logger {
        var logger = self.baseLogger
        logger[metadataKey: "socketipc.connection"] = "\(self.id)"
        if let peer = self.peer { logger[metadataKey: "socketipc.peer"] = "\(peer)" }
        return logger
    }
    private let baseLogger: Logger

    /// The state machine a connection keeps under its lock: continuations wait for replies and for writability,
    /// and timers are NIO's scheduled tasks.
    typealias StateMachine = ConnectionStateMachine<
        UnsafeContinuation<ByteBuffer, any Error>,
        UnsafeContinuation<Void, any Error>,
        Scheduled<Void>
    >

    /// The channel the connection's frames travel on.
    let channel: any Channel
    /// The channel's event loop, kept so that the hot path does not ask the channel for it each time.
    let eventLoop: any EventLoop
    /// Where flushes write: straight to the socket where it may, else through the channel.
    let writer: any FrameWriter
    /// The limits and timeouts the connection was opened with.
    /// The connection's options, shared with its server's other connections.
    let sharedOptions: SharedConnectionOptions
    /// The connection's limits and timeouts.
    var options: ConnectionOptions { self.sharedOptions.value }
    /// Runs the client's tasks on the channel's event loop (`Client.withConnection`).
    let taskExecutor: EventLoopTaskExecutor
    /// The event loop's spare buffers: for coalescing (taken when the queue needs one, given back after each flush)
    /// and for encoding typed messages.
    let bufferPool: EventLoopBufferPool
    /// The event loop's busy poller when this connection polls (``ConnectionOptions/busyPolling`` not off, and more
    /// than one core); `nil` otherwise.
    let busyPoller: EventLoopBusyPoller?
    /// The event loop's busy poller whatever this connection's mode: work this connection queues on the loop ends
    /// a poll that other connections of the loop started, so that it does not wait behind it.
    let loopPoller: EventLoopBusyPoller
    /// The polling window after each flush, in nanoseconds: the fixed window, or the adaptive one's maximum; 0 when
    /// this connection does not poll.
    let busyPollNanoseconds: UInt64
    /// Whether the poller sizes its window to the traffic (``BusyPolling/adaptive(maximum:)``).
    let busyPollsAdaptively: Bool
    /// Everything the connection tracks; each operation locks it once, and acts on what it returns outside the lock.
    let state: Mutex<StateMachine>
    /// How many request ids this side has taken (the last id is this count's low 32 bits); not state: ids are
    /// only told apart.
    let requestIDs = Atomic<UInt64>(0)
    /// Tells apart the senders waiting in ``waitUntilWritable()``, for their cancellation.
    let writeWaiterIDs = Atomic<UInt64>(0)
    /// Where ``Reply/complete(_:)`` runs its work, made with the first and cancelled when the connection closes.
    let handlerTasks: ConnectionTaskSlot
    /// Calls and keepalive: the peer's hello flags, call ids, the services layer's receiver.
    let calls: ConnectionCalls
    /// Descriptor passing, when ``ConnectionOptions/maximumDescriptorsPerMessage`` turned it on.
    let descriptorPassing: DescriptorPassing?
    /// The channel's socket, when known (with a relay, its end of the relay's socket pair): the keepalive asks it how
    /// much the peer has not read yet (``Connection/unreadBytes()``).
    let socketDescriptor: Int32?

    /// Makes the connection of `channel`; the channel handler calls this once the channel is active.
    /// - Parameters:
    ///   - descriptor: The channel's socket, when known: flushes write to it directly while the channel has nothing
    ///     pending (Linux). Ignored when `writer` is given.
    ///   - writer: Where flushes write; by default a ``SocketFrameWriter`` of `channel` and `descriptor`.
    ///   - handlerTaskOwner: Who owns the tasks of the connection's asynchronous replies: the server's task group,
    ///     or (a client's connection) a task of the connection's own.
    ///   - userCalls: The call account the peer's user shares across its connections (a server's), if any.
    init(
        id: UInt64,
        channel: any Channel,
        descriptor: Int32? = nil,
        writer: (any FrameWriter)? = nil,
        options sharedOptions: SharedConnectionOptions,
        peer: PeerCredentials?,
        logger: Logger,
        handlerTaskOwner: ConnectionTasks.Owner = .connection,
        descriptorRelay: DescriptorRelay? = nil,
        userCalls: UserCallAccount? = nil
    ) {
        self.id = id
        self.descriptorPassing = descriptorRelay.map { DescriptorPassing(relay: $0) }
        self.socketDescriptor = descriptor
        self.handlerTasks = ConnectionTaskSlot(owner: handlerTaskOwner)
        if case .connection = handlerTaskOwner {
            self.calls = ConnectionCalls(isInitiator: true)
        } else {
            self.calls = ConnectionCalls(isInitiator: false, userCalls: userCalls)
        }
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.writer = writer ?? SocketFrameWriter(channel: channel, descriptor: descriptor)
        self.sharedOptions = sharedOptions
        let options = sharedOptions.value
        self.peer = peer
        // With a relay, the channel's descriptor is the relay's socket pair; the peer is on the relay's socket.
        if options.holdsPeerProcess, let descriptor = descriptorRelay?.socket ?? descriptor, let peer {
            self.peerProcess = PeerProcess.take(descriptor: descriptor, processID: peer.processID)
        } else {
            self.peerProcess = nil
        }
        self.baseLogger = logger
        self.taskExecutor = EventLoopTaskExecutor.shared(for: channel.eventLoop)
        self.bufferPool = EventLoopBufferPool.shared(for: channel.eventLoop)
        self.loopPoller = EventLoopBusyPoller.shared(for: channel.eventLoop)
        if let window = options.busyPolling.window, EventLoopBusyPoller.isAvailable {
            self.busyPoller = self.loopPoller
            self.busyPollNanoseconds = window.nanoseconds
            self.busyPollsAdaptively = window.adaptive
        } else {
            self.busyPoller = nil
            self.busyPollNanoseconds = 0
            self.busyPollsAdaptively = false
        }
        self.state = Mutex(
            StateMachine(
                writeBufferHighWatermark: options.writeBufferHighWatermark,
                maximumConcurrentRequests: options.maximumConcurrentRequests,
                maximumUnansweredRequestBytes: options.effectiveMaximumMessageSize
            )
        )
    }

    /// Whether the connection is still open.
    public var isOpen: Bool { self.state.withLock { $0.isOpen } }
}
