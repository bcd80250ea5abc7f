import Metrics

/// Where and how a ``Server`` listens.
public struct ServerConfiguration: Sendable {
    /// The socket file's path; at most ``SocketPath/maximumLength`` bytes. On Linux, `@name` is an address in the
    /// abstract namespace instead (``SocketPath``): no file, so no lock, mode or removal; any process in the network
    /// namespace can connect, so only ``authorization`` protects it.
    public var path: String
    /// The socket file's permission bits, set before the server accepts its first connection whatever the process
    /// umask; default `0o600` (only the owner may connect). Another mode on an abstract address is an error
    /// (`invalidConfiguration`): there is no file.
    public var mode: UInt16 = Self.defaultMode
    /// The default ``mode``: `0o600`.
    public static let defaultMode: UInt16 = 0o600
    /// A listening socket inherited from a service manager (``SocketActivation``) to serve instead of creating one
    /// at ``path``; `nil`, the default, creates one. The server then never creates, changes, locks or removes the
    /// socket's file (``mode``, ``createParentDirectory`` and ``requiresSecureParentDirectory`` do not apply), and
    /// closes its descriptor without shutting the socket down when it stops, so that the manager keeps listening.
    public var inheritedSocket: InheritedSocket? = nil
    /// Whether a server on an abstract address (`@name`) may use a policy that serves every process (`AuthorizationPolicy.anyone`);
    /// default `false`: such a server refuses to start (`invalidConfiguration`), since no file mode stands in front
    /// of it. The lesson of containerd's CVE-2020-15257 (an abstract socket that any container on the host network
    /// could reach).
    public var allowsAnyoneOnAbstractAddress = false
    /// How often a running server sets the access and modification times of its socket file and lock file to now,
    /// so that a cleaner of old files (systemd-tmpfiles aging `/tmp` after 10 days) leaves them: one hour. Tests
    /// shorten it.
    package var socketFileRefreshInterval: Duration = .seconds(3600)
    /// Whether to create a missing parent directory (with mode `0o700`) instead of failing; default `false`.
    ///
    /// Nothing is made until the deepest directory that exists passes the check of
    /// ``requiresSecureParentDirectory`` (when on), and the directories are made one at a time, following no symbolic
    /// link met among them, as systemd's `mkdir_parents_safe`: another user's link on the way makes the start fail
    /// with `insecureDirectory` before anything is created where it points.
    public var createParentDirectory = false
    /// The `listen` backlog; default 256.
    public var backlog: Int32 = 256
    /// How long a graceful shutdown lets connections finish their requests before closing them; default 10 s.
    /// Handler work still running then is cancelled, also work that goes on after its connection closed (an
    /// EOF-style message received whole), so that ``Server/run()`` returns within about this time.
    public var shutdownGracePeriod: Duration = .seconds(10)
    /// The most connections served at once; a connection beyond it is closed as soon as it is accepted.
    /// Default 10,000.
    ///
    /// To hold them, ``Server/run()`` raises the process's soft `RLIMIT_NOFILE` toward the hard limit (as Go's
    /// runtime does at start), and programs the process starts afterwards inherit the raised limit. A program that
    /// uses `select(2)` breaks on descriptors above `FD_SETSIZE` (1024), so give children the soft limit the process
    /// started with, as Go's `os/exec` and systemd do (`socket-ipc serve --exec` does: `setrlimit` in the child).
    /// Where the hard limit is too low, fewer connections are served (half of them per user), with a warning. With
    /// descriptor passing on (``ConnectionOptions/maximumDescriptorsPerMessage``), each connection also takes two
    /// threads, and the limits are fitted in the same way to the threads the process may still start: its control
    /// group's `pids.max` (systemd's `TasksMax=`) and, for a user other than root, `RLIMIT_NPROC`, less a reserve
    /// of an eighth (64 to 256).
    public var maximumConnections = 10_000
    /// How many descriptors the application needs besides its connections: its own files and sockets, the pipes of
    /// the child processes it runs. Default 0. When ``Server/run()`` fits the connection limits to the open file
    /// limit (``maximumConnections``), it keeps these back on top of its own reserve (an eighth of the limit, 32 to
    /// 256, for the process's other files), so that connections cannot take them: where the limit is too low,
    /// fewer connections are served, and where it holds not one besides the reserve, `run()` throws
    /// `invalidConfiguration`. `socket-ipc serve --exec` keeps 8 for each command that may run at once (the ends
    /// of its four pipes). As PostgreSQL keeps `NUM_RESERVED_FDS` back from its pool of files. A negative value
    /// counts as 0.
    public var reservedDescriptors = 0
    /// The most connections one user id may hold at once (counted by the peer's `SO_PEERCRED` uid; peers whose
    /// credentials are unknown share one count); a connection beyond it is closed as soon as it is accepted, so one
    /// user cannot take every slot from the others. Default 1,024. (D-Bus's `max_connections_per_user` plays the
    /// same part.)
    public var maximumConnectionsPerUser = 1024
    /// The most connections of one user id that may be open without having finished their handshake (framed: the
    /// peer's hello has not arrived; EOF style: the message has not been handled yet); a connection beyond it is
    /// closed as soon as it is accepted. Default 128. (D-Bus's `max_incomplete_connections`, OpenSSH's
    /// `MaxStartups`, counted per user so that one user's silent connections never lock out another's.)
    public var maximumPendingHandshakesPerUser = 128
    /// The most bytes of framed messages not yet received whole that one user id's connections may hold together
    /// (a large frame arrives over many reads and is gathered until its last byte); default 256 MiB. A connection
    /// whose next read would take its user over it is closed with going-away `0x01` and `resourceExhausted`, its
    /// frame dropped, and the user's other connections go on; one frame alone is always taken. What counts is the
    /// memory holding the bytes (a frame's start kept in the read buffer it came in counts that whole buffer, up to
    /// 1 MiB), once a connection keeps more than 64 KiB. Without it, each connection may hold a frame of up to
    /// ``ConnectionOptions/maximumMessageSize``, so one user's ``maximumConnectionsPerUser`` connections could make
    /// the server hold 16 GiB with the defaults (a review: 300 connections that each sent all but the last byte of
    /// a 16 MB request took a server to 4.6 GB). As D-Bus bounds what a connection has queued unread
    /// (`max_incoming_bytes`), counted per user here so that one user cannot fill the server's memory.
    ///
    /// EOF style: an unfinished message gathered for a collecting handler counts the same way, and so do the
    /// chunks of a streamed message (``EOFMessageHandler/streaming(_:)``) read but not yet taken by its handler
    /// (up to 8 of up to 1 MiB each per connection); a chunk that would take the user over the limit closes its
    /// connection, and the handler's ``EOFMessageBody`` throws `resourceExhausted` after the chunks queued before.
    public var maximumIncomingBytesPerUser = 256 * 1024 * 1024
    /// The most requests (version 1, kind `0x02`) of one user id handed to the handler and not yet answered, across
    /// its connections; default 1,024. A connection whose request reaches it, and each of the user's connections that
    /// has a request to hand out meanwhile, stops handing out its peer's frames, as at
    /// ``ConnectionOptions/maximumConcurrentRequests`` (a pause, never an error: replies, pings and call credit still
    /// pass, and the peer's writes wait in the kernel), and goes on once answers bring the user down to three
    /// quarters of it. Connections on different event loops may pass it by one request each at the same moment; one
    /// whose requests bring descriptors, by one more. A request counts from when it is handed to the handler until it is answered or its connection
    /// closes. Without it, each of a user's ``maximumConnectionsPerUser`` connections could have its own
    /// ``ConnectionOptions/maximumConcurrentRequests`` in progress: 102,400 handlers' tasks with the defaults. As
    /// `ServiceRouter.maximumConcurrentCallsPerUser` bounds typed calls (which are refused instead, with a status).
    public var maximumConcurrentRequestsPerUser = 1024
    /// How long a framed peer has to send its hello after the connection is accepted, and an EOF-style peer to
    /// send its whole message up to its half-close; a connection that takes longer is closed. Default 10 s.
    /// (PostgreSQL's `authentication_timeout`, OpenSSH's `LoginGraceTime`.)
    ///
    /// For an EOF-style ``EOFMessageHandler/streaming(_:)`` handler, which reads only as fast as it consumes, the
    /// limit is on each wait for more bytes instead of on the whole message.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How long a framed peer may leave the server's writes unread: when the connection's channel is above its high
    /// watermark (2 MiB written and not taken) and the peer takes none of it for this long, the connection closes
    /// with `peerNotResponding`.
    /// Default 60 s, as nginx's `send_timeout`; `nil` waits as long as it takes.
    ///
    /// The server stops reading from a peer that does not read its replies, so without a limit such a connection
    /// lasts for good, also one whose peer is gone while a descriptor it passed keeps its own end open (inside the
    /// socket's unread bytes), holding its user's slot and the server's descriptors. A peer that reads at least 1 MiB
    /// (the gap between the channel's watermarks) in each such time brings the channel below its low watermark and is
    /// not closed; with the default, one that reads less than about 17 KB/s while over 2 MiB wait for it is.
    public var writeTimeout: Duration? = .seconds(60)
    /// Whether to refuse a parent directory that others could use to replace the socket file: one that a user other
    /// than root and the server's own can write (group- or world-writable without the sticky bit), or that is owned
    /// by another user who is not root: the directory and every ancestor of its real path (symbolic links resolved), as
    /// OpenSSH's `safe_path` checks them; a sticky directory such as `/tmp` (mode 1777) is accepted. Default `true`;
    /// set it to `false` only for a directory you trust anyway.
    public var requiresSecureParentDirectory = true
    /// Which peers may connect; default `AuthorizationPolicy.sameUser` (processes of the server's own user id, and
    /// root). The file mode is the first line of defence; this policy is the second, checked on every connection
    /// with the kernel's `SO_PEERCRED`.
    public var authorization: AuthorizationPolicy = .sameUser
    /// Limits and timeouts of each framed connection.
    public var connection = ConnectionOptions()
    /// Where the server reports its metrics (connections accepted, refused, unauthorized, active, and closed by
    /// an error; the labels are listed in the README); `nil`, the default, uses swift-metrics' `MetricsSystem`
    /// as bootstrapped when the server is made.
    public var metricsFactory: (any MetricsFactory)? = nil
    /// Called for each connection the server refuses, with the peer's credentials (`nil` when the platform cannot
    /// tell them) and why: `SocketIPCError.Code.unauthorized` when ``authorization`` refused the peer,
    /// `SocketIPCError.Code.resourceExhausted` when a connection limit (``maximumConnections``,
    /// ``maximumConnectionsPerUser``) was reached (a peer both refuse is reported as `unauthorized`), and also when
    /// the server passes descriptors and 64 or more closes of descriptors that the peer's user passed are waiting,
    /// none of which ended for a second (a file system it serves that does not answer a flush; see SECURITY.md); the
    /// error's message says which and why. Not called for connections closed because the server is shutting down, nor for
    /// one that waited for a handshake slot (``maximumPendingHandshakesPerUser``) until its handshake time ran out.
    /// `nil`, the default, calls nothing; refusals are logged at `notice` with the peer's uid and pid (at most 10
    /// lines a second) and counted in the metrics either way.
    ///
    /// Called on the thread that accepts connections, for every refusal however fast a hostile peer makes them: it
    /// must return quickly and must not block (count, or hand the event to a task).
    public var onConnectionRefused: (@Sendable (PeerCredentials?, SocketIPCError) -> Void)? = nil

    /// Creates a configuration for a server on `path`.
    public init(path: String) {
        self.path = path
    }

    /// Creates a configuration for a server on a listening socket the process inherited (socket activation); its
    /// ``path`` is the socket's address, for logs.
    public init(inheritedSocket: InheritedSocket) {
        self.path = inheritedSocket.address ?? "fd:\(inheritedSocket.descriptor)"
        self.inheritedSocket = inheritedSocket
    }
}
