import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Limits and timeouts of a framed connection, the same on the client and the server side.
public struct ConnectionOptions: Sendable {
    /// The largest payload of one message, request or reply, in bytes; default 16 MiB.
    ///
    /// A larger outgoing payload is refused with `messageTooLarge` before anything is sent. A peer that announces a
    /// larger incoming frame gets a going-away frame saying so and the connection closes; its bytes are never
    /// buffered. A frame's 32-bit length field caps any payload at 4 GiB − 6 bytes; a larger value (or `Int.max`)
    /// means that.
    ///
    /// It also bounds what the peer's unanswered requests of 64 KiB or more hold together: beyond it (one always
    /// passes), no further request is handed out until answers make room. A call may hold one message of up to this
    /// size beyond its 64 KiB window (PROTOCOL.md "Flow control"), for each of the connection's calls: lower it (or
    /// `ServiceRouter.maximumConcurrentCalls`) for peers that need no large messages.
    public var maximumMessageSize: Int = FrameDecoder.defaultMaximumPayload

    /// The most any frame can carry: the 32-bit length field counts the payload and a header of up to 5 bytes.
    static let largestPayload = Int(UInt32.max) - 5

    /// ``maximumMessageSize`` as the codec applies it: a larger value (`Int.max` for "no limit") means the largest
    /// payload a frame can carry, 4 GiB − 6 bytes.
    var effectiveMaximumMessageSize: Int { min(max(self.maximumMessageSize, 0), Self.largestPayload) }
    /// How many bytes may wait in the connection's write queue before ``Connection/send(_:)`` and
    /// ``Connection/request(_:timeout:)`` suspend until the peer reads; default 256 KiB.
    public var writeBufferHighWatermark: Int = 256 * 1024
    /// The most requests from the peer that may wait for their reply at once; default 100 (HTTP/2's recommended
    /// minimum of `SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113 §6.5.2).
    ///
    /// Past it no further request or message is handed to the handler until one is answered. Replies to this side's
    /// own requests keep being read meanwhile (a handler may be waiting for one); once 1 MiB of other frames is kept
    /// unread, the connection stops reading and the kernel pushes back on the peer. A server bounds one user's
    /// requests across its connections too (``ServerConfiguration/maximumConcurrentRequestsPerUser``).
    public var maximumConcurrentRequests = 100
    /// How long a connection may stay idle (no frame received, no request in flight either way) before this side
    /// says it is going away and closes it; `nil`, the default, never closes an idle connection. (gRPC's
    /// `MAX_CONNECTION_IDLE`.) A server's connection whose peer keeps shared payloads unread keeps its slot after
    /// that close until the peer reads or closes (SECURITY.md).
    public var idleTimeout: Duration? = nil
    /// How long ``Connection/request(_:timeout:)`` waits for a reply when the call names no timeout; `nil`, the
    /// default, waits as long as the connection is open.
    public var requestTimeout: Duration? = nil
    /// How often this side pings a peer that speaks calls, to find out whether it is still there; `nil`, the
    /// default, never pings. (gRPC's `KEEPALIVE_TIME`; off by default there too.)
    ///
    /// A peer that crashed or was killed is noticed at once (the kernel closes its socket). One that is frozen
    /// (stopped with `SIGSTOP`, deadlocked, swapped out) keeps its socket open and answers nothing: only a ping
    /// finds it. A version 1 peer, which does not speak calls, is never pinged.
    public var keepaliveInterval: Duration? = nil
    /// How long a keepalive ping may wait for its pong before the connection is closed with `peerNotResponding`;
    /// default 20 seconds (gRPC's `KEEPALIVE_TIMEOUT`). Used only with ``keepaliveInterval``.
    public var keepaliveTimeout: Duration = .seconds(20)
    /// Whether the connection's event loop polls for the next message for a while after each read and write
    /// instead of sleeping; default ``BusyPolling/adaptive(maximum:)`` with a 200 µs maximum, which polls only while
    /// the peer's answers come back within that time, and not at all on one-way traffic or an idle connection.
    ///
    /// ``BusyPolling/fixed(_:)`` is the latency mode (polls after every read and write, whatever the traffic);
    /// ``BusyPolling/off`` never polls. Set it on both sides for the full effect.
    public var busyPolling: BusyPolling = .adaptive()
    /// How long one read may hand frames to the handler, once it has handed out 1,024, before the rest waits for the
    /// event loop's next turn (``TurnClock``): 2 ms; `nil` for no limit in time (only
    /// `ConnectionChannelHandler.frameBudget`'s in frames). Tests of the frame budget turn it off.
    package var turnTime: Duration? = .milliseconds(2)
    /// The latency mode's window: how long the event loop polls after every read and write (``busyPolling`` set to
    /// ``BusyPolling/fixed(_:)``); zero when polling is off, `nil` when it is adaptive. Setting `nil` restores the
    /// default (adaptive); setting zero turns polling off.
    public var busyPollDuration: Duration? {
        get {
            switch self.busyPolling.mode {
            case .fixed(let duration): return duration
            case .off: return .zero
            case .adaptive: return nil
            }
        }
        set { self.busyPolling = newValue.map { BusyPolling.fixed($0) } ?? .adaptive() }
    }
    /// The kernel send buffer asked for on each connection's socket (`SO_SNDBUF`), in bytes; default 1 MiB. `nil`
    /// keeps the system's default (about 208 KiB on Linux).
    ///
    /// It bounds how many bytes the kernel holds between a writer and a reader that has not read them yet, so a
    /// larger buffer lets a large message go out in fewer, longer writes with fewer thread wake-ups on both sides.
    /// Kernel memory is only charged for bytes really waiting. Linux caps the request at `net.core.wmem_max` (and
    /// then doubles it for its own bookkeeping), so on a system with the default limits it has little effect.
    public var socketSendBufferSize: Int? = 1024 * 1024
    /// How long ``Connection/close()``, or the close after a protocol error (with its going-away frame), waits for
    /// what was sent before it to reach the socket, when the peer does not read it; the connection is then closed
    /// regardless. Default 10 seconds.
    public var closeTimeout: Duration = .seconds(10)
    /// How long a connection that tells its peer why it is closing (a going-away frame after a protocol error, or
    /// an authorization refusal) stays half-closed, waiting for the peer to close its side, before it closes.
    /// Default 1 second.
    ///
    /// Closing at once with the peer's bytes unread could make the peer's next write fail with `EPIPE` (or the
    /// kernel reset the connection) before the peer reads the frame that says why; OpenSSH and PostgreSQL linger
    /// the same way before they close on a refused client.
    public var goAwayLingerTime: Duration = .seconds(1)
    /// Whether each connection holds a pidfd of its peer, taken when it connected (``Connection/peerProcess``), so
    /// that a handler can ask later whether that very process still runs, read its control group or signal it
    /// without the pid-reuse race; default `false`: it costs one more descriptor per connection. Linux 6.5 and later
    /// (`SO_PEERPIDFD`); elsewhere there is none.
    public var holdsPeerProcess = false

    /// The most file descriptors one message, request or reply may carry each way (`SCM_RIGHTS`); default 0: this
    /// side neither passes nor accepts descriptors. 1 to 253 (the kernel's `SCM_MAX_FD`; larger values count as 253)
    /// turns descriptor passing on: the hello says so (flag `0x02`, PROTOCOL.md "Passing descriptors"), and
    /// ``Connection/send(_:descriptors:)`` and its kin work once the peer said so too.
    ///
    /// A connection that passes descriptors carries its bytes through a relay of two threads of its own (SwiftNIO's
    /// channels cannot read descriptors), so it costs two threads and an extra copy of each byte; leave it off for
    /// connections that need none. A peer that passes more descriptors than this, or passes them without announcing
    /// them, breaks the protocol: its connection closes with `protocolViolation`, and every descriptor it passed is
    /// closed. Linux; elsewhere (untested) setting it makes the connection fail with `unsupported`.
    public var maximumDescriptorsPerMessage = 0

    /// How long descriptors the peer passed may wait before a frame takes them (received with a descriptors frame,
    /// or with its first bytes, and not yet handed to the handler) before the connection closes with
    /// `protocolViolation`; default 150 s, as D-Bus's `pending_fd_timeout`. `nil` waits as long as the connection is
    /// open. Measured from when this side last saw such descriptors move on, checked every this long, so the close
    /// comes between one and two of these after the descriptors stopped moving.
    ///
    /// Descriptors this side holds can keep the connection itself open (D-Bus's CVE-2014-3637): a peer that passes
    /// its own end of the connection (or a socket whose queue holds it), never sends the frame that would take it,
    /// and exits, leaves a connection whose end-of-file never comes, since this side holds the last reference to the
    /// peer's end; before this limit such connections stayed until the server stopped, and filled its user's
    /// ``ServerConfiguration/maximumConnectionsPerUser``. Time while this side holds the peer's frames back, paused at
    /// ``maximumConcurrentRequests`` until its handler answers, does not count: the wait is then this side's doing
    /// (so a handler that holds that many requests until its connection closes also keeps such a connection).
    public var pendingDescriptorTimeout: Duration? = .seconds(150)

    /// Payloads of at least this many bytes travel in sealed shared memory (a `memfd` passed with the frame, PROTOCOL.md
    /// "Shared payloads") instead of through the socket, when both sides pass descriptors
    /// (``maximumDescriptorsPerMessage``); default 256 KiB, chosen by measurement (BENCHMARKS.md, "Shared payloads").
    /// `Int.max` turns it off for buffers (a ``SharedMemoryLoan`` is sent in shared memory whatever its size).
    /// Messages, requests, replies and call messages all do; the receiver gets an ordinary buffer, or a
    /// ``MappedPayload`` if its handler asks for one. If the shared memory cannot be made (out of memory, no `memfd`),
    /// the payload goes through the socket. Such memory is charged to the side that made it for as long as the peer
    /// keeps its descriptor or a mapping (SECURITY.md, "Known limits"); toward peers not trusted with that, use
    /// `Int.max`.
    public var sharedPayloadThreshold = 256 * 1024

    /// ``maximumDescriptorsPerMessage`` within 0...253.
    var effectiveMaximumDescriptors: Int { min(max(self.maximumDescriptorsPerMessage, 0), 253) }

    /// The flags of this side's hello.
    var helloFlags: HelloFlags {
        self.effectiveMaximumDescriptors > 0 ? Hello.flags.union([.descriptors, .sharedPayloads, .descriptorCredit]) : Hello.flags
    }

    /// How connections size their read buffers: from 128 bytes up to 1 MiB as traffic demands (the allocator
    /// doubles after a read that filled the buffer and shrinks after reads that did not). A small start keeps idle
    /// connections small, and the large end lets a large message arrive in a few reads, each copied once; an idle
    /// connection keeps none of its large buffers (``UnpooledAdaptiveRecvAllocator``).
    static var receiveAllocator: UnpooledAdaptiveRecvAllocator {
        UnpooledAdaptiveRecvAllocator(minimum: 64, initial: 128, maximum: 1024 * 1024)
    }

    /// Sets the socket options these options ask for on a connection's own socket, when its channel does not own it:
    /// a connection that passes descriptors, whose channel has the relay's socket pair (``applySocketOptions(to:)``
    /// sets them there too). Best effort: a failure leaves the kernel's default.
    func applySocketOptions(toDescriptor descriptor: Int32) {
        guard var size = self.socketSendBufferSize.map({ Int32(clamping: $0) }), size > 0 else { return }
        _ = setsockopt(descriptor, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets the socket options these options ask for on a new connection's channel; call on its event loop.
    func applySocketOptions(to channel: any Channel) throws {
        guard let size = self.socketSendBufferSize, size > 0 else { return }
        try channel.syncOptions?.setOption(.socketOption(.so_sndbuf), value: SocketOptionValue(clamping: size))
    }

    /// When a channel stops accepting writes (NIO's writability): above 2 MiB not yet in the socket, again below
    /// 1 MiB. Large enough that the next large message is queued while the previous one still drains, so the socket
    /// never waits for the writer to wake up.
    static var channelWriteWatermark: ChannelOptions.Types.WriteBufferWaterMark {
        ChannelOptions.Types.WriteBufferWaterMark(low: 1024 * 1024, high: 2 * 1024 * 1024)
    }

    /// Creates options with the defaults.
    public init() {}
}
