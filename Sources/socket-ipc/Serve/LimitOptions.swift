import ArgumentParser
import SocketIPC

/// The limits and timeouts of `serve` and `listen`; the defaults are the library's (``ServerConfiguration``,
/// ``ConnectionOptions``).
struct LimitOptions: ParsableArguments {
    @Option(
        name: .long, help: ArgumentHelp("The largest message accepted, in bytes (default 16 MiB).", valueName: "bytes"))
    var maxMessageSize: Int?

    @Option(name: .long, help: ArgumentHelp("The most connections served at once (default 10000).", valueName: "n"))
    var maxConnections: Int?

    @Option(
        name: .long, help: ArgumentHelp("The most connections of one user id at once (default 1024).", valueName: "n"))
    var maxConnectionsPerUser: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most connections of one user id that have not finished their handshake (default 128).",
            valueName: "n"
        )
    )
    var maxPendingHandshakesPerUser: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most bytes of messages not yet received whole that one user id's connections may hold together; "
                + "a connection that would go over is closed (default 268435456, 256 MiB).",
            valueName: "bytes"
        )
    )
    var maxIncomingBytesPerUser: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a peer has to send its hello (framed) or its whole message (eof) (default 10).",
            valueName: "seconds"
        )
    )
    var handshakeTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Close a framed connection whose peer reads none of the server's writes for this many seconds (default "
                + "60, as nginx's send_timeout).",
            valueName: "seconds"
        )
    )
    var writeTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Close a framed connection idle for this many seconds (default: never).", valueName: "seconds")
    )
    var idleTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most requests of one connection waiting for their reply; past it the server stops reading (default 100).",
            valueName: "n"
        )
    )
    var maxConcurrentRequests: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most requests of one user id waiting for their reply, across its connections; past it the server "
                + "stops reading from that user's connections (default 1024).",
            valueName: "n"
        )
    )
    var maxConcurrentRequestsPerUser: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Ping a framed peer that speaks calls after this many seconds, to find one that froze (default: never).",
            valueName: "seconds"
        )
    )
    var keepaliveInterval: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a keepalive ping may wait for its answer before the connection is closed (default 20).",
            valueName: "seconds"
        )
    )
    var keepaliveTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds a graceful shutdown lets requests in flight finish before it closes the connections (default 10).",
            valueName: "seconds"
        )
    )
    var shutdownGracePeriod: Double?

    @Option(name: .long, help: ArgumentHelp("The listen(2) backlog (default 256).", valueName: "n"))
    var backlog: Int32?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Accept up to n file descriptors passed with each framed message or request (SCM_RIGHTS; default 0: "
                + "none), and print what each one is.",
            valueName: "n"
        )
    )
    var maxDescriptors: Int?

    func validate() throws {
        for (name, value) in [
            ("--max-message-size", self.maxMessageSize),
            ("--max-connections", self.maxConnections), ("--max-connections-per-user", self.maxConnectionsPerUser),
            ("--max-pending-handshakes-per-user", self.maxPendingHandshakesPerUser),
            ("--max-incoming-bytes-per-user", self.maxIncomingBytesPerUser),
            ("--max-concurrent-requests", self.maxConcurrentRequests),
            ("--max-concurrent-requests-per-user", self.maxConcurrentRequestsPerUser),
            ("--backlog", self.backlog.map(Int.init)),
        ] {
            if let value, value < 1 { throw ValidationError("\(name) must be at least 1") }
        }
        for (name, value) in [
            ("--handshake-timeout", self.handshakeTimeout), ("--idle-timeout", self.idleTimeout),
            ("--write-timeout", self.writeTimeout),
            ("--keepalive-interval", self.keepaliveInterval), ("--keepalive-timeout", self.keepaliveTimeout),
        ] {
            if let value, !(value > 0) { throw ValidationError("\(name) must be a positive number of seconds") }
        }
        if let value = self.maxDescriptors, !(0...253).contains(value) {
            throw ValidationError("--max-descriptors must be 0 to 253 (the kernel's SCM_MAX_FD)")
        }
        if let value = self.shutdownGracePeriod, !(value >= 0) {
            throw ValidationError("--shutdown-grace-period must be 0 or more seconds")
        }
    }

    /// Sets the limits given on the command line; leaves the others at their defaults.
    func apply(to configuration: inout ServerConfiguration) {
        if let value = self.maxMessageSize { configuration.connection.maximumMessageSize = value }
        if let value = self.maxConnections { configuration.maximumConnections = value }
        if let value = self.maxConnectionsPerUser { configuration.maximumConnectionsPerUser = value }
        if let value = self.maxPendingHandshakesPerUser { configuration.maximumPendingHandshakesPerUser = value }
        if let value = self.maxIncomingBytesPerUser { configuration.maximumIncomingBytesPerUser = value }
        if let value = self.handshakeTimeout { configuration.handshakeTimeout = duration(seconds: value) }
        if let value = self.writeTimeout { configuration.writeTimeout = duration(seconds: value) }
        if let value = self.idleTimeout { configuration.connection.idleTimeout = duration(seconds: value) }
        if let value = self.maxConcurrentRequests { configuration.connection.maximumConcurrentRequests = value }
        if let value = self.maxConcurrentRequestsPerUser { configuration.maximumConcurrentRequestsPerUser = value }
        if let value = self.keepaliveInterval { configuration.connection.keepaliveInterval = duration(seconds: value) }
        if let value = self.keepaliveTimeout { configuration.connection.keepaliveTimeout = duration(seconds: value) }
        if let value = self.shutdownGracePeriod { configuration.shutdownGracePeriod = duration(seconds: value) }
        if let value = self.backlog { configuration.backlog = value }
        if let value = self.maxDescriptors { configuration.connection.maximumDescriptorsPerMessage = value }
    }
}
