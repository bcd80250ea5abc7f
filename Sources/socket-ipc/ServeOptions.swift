import ArgumentParser
import Logging
import SocketIPC

/// `serve`'s options that say who may connect.
struct AccessOptions: ParsableArguments {
    @Option(
        name: .customLong("allow-uid"),
        parsing: .singleValue,
        help: ArgumentHelp(
            "Also serve processes of this user id (repeatable). By default only the server's own user and root are served.",
            valueName: "uid"
        )
    )
    var userIDs: [UInt32] = []

    @Option(
        name: .customLong("allow-gid"),
        parsing: .singleValue,
        help: ArgumentHelp(
            "Also serve processes whose primary or supplementary group is this group id (repeatable).",
            valueName: "gid"
        )
    )
    var groupIDs: [UInt32] = []

    @Flag(
        name: .customLong("allow-anyone"),
        help: "Serve every process that can open the socket file: the file mode is then the only access control."
    )
    var anyone = false

    @Flag(
        name: .customLong("allow-insecure-directory"),
        help: "Serve from a directory that other users could write to (no sticky bit) or that another user owns."
    )
    var allowInsecureDirectory = false

    /// The policy these options describe: the server's own user and root, plus the users and groups named.
    var policy: AuthorizationPolicy {
        if self.anyone { return .anyone }
        var policy = AuthorizationPolicy.sameUser
        if !self.userIDs.isEmpty { policy = policy || .users(Set(self.userIDs)) }
        if !self.groupIDs.isEmpty { policy = policy || .groups(Set(self.groupIDs)) }
        return policy
    }

    func validate() throws {
        if self.anyone && !(self.userIDs.isEmpty && self.groupIDs.isEmpty) {
            throw ValidationError("--allow-anyone already serves every user; drop --allow-uid and --allow-gid")
        }
    }
}

/// `serve`'s limits and timeouts; the defaults are the library's (``ServerConfiguration``, ``ConnectionOptions``).
struct LimitOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The most connections served at once (default 10000).", valueName: "n"))
    var maxConnections: Int?

    @Option(name: .long, help: ArgumentHelp("The most connections of one user id at once (default 1024).", valueName: "n"))
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
            "Seconds a peer has to send its hello (framed) or its whole message (eof) (default 10).",
            valueName: "seconds"
        )
    )
    var handshakeTimeout: Double?

    @Option(
        name: .long,
        help: ArgumentHelp("Close a framed connection idle for this many seconds (default: never).", valueName: "seconds")
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

    func validate() throws {
        for (name, value) in [
            ("--max-connections", self.maxConnections), ("--max-connections-per-user", self.maxConnectionsPerUser),
            ("--max-pending-handshakes-per-user", self.maxPendingHandshakesPerUser),
            ("--max-concurrent-requests", self.maxConcurrentRequests),
        ] {
            if let value, value < 1 { throw ValidationError("\(name) must be at least 1") }
        }
        for (name, value) in [("--handshake-timeout", self.handshakeTimeout), ("--idle-timeout", self.idleTimeout)] {
            if let value, !(value > 0) { throw ValidationError("\(name) must be a positive number of seconds") }
        }
    }

    /// Sets the limits given on the command line; leaves the others at their defaults.
    func apply(to configuration: inout ServerConfiguration) {
        if let value = self.maxConnections { configuration.maximumConnections = value }
        if let value = self.maxConnectionsPerUser { configuration.maximumConnectionsPerUser = value }
        if let value = self.maxPendingHandshakesPerUser { configuration.maximumPendingHandshakesPerUser = value }
        if let value = self.handshakeTimeout { configuration.handshakeTimeout = duration(seconds: value) }
        if let value = self.idleTimeout { configuration.connection.idleTimeout = duration(seconds: value) }
        if let value = self.maxConcurrentRequests { configuration.connection.maximumConcurrentRequests = value }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
