#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a server's listening socket comes from: a socket file it claims (the default), an abstract address it binds
/// (`@name`, Linux), or a socket it inherited (socket activation).
struct ServerListener {
    /// The bound, listening descriptor, handed to the ``Acceptor``.
    let descriptor: Int32
    /// The address served, for logs and `onServerRunning`.
    let path: SocketPath
    /// The owner of the socket file, for a socket file the server created; released when the server stops.
    let owner: SocketFileOwner?
    /// Whether the listening socket is shared with another process (inherited): it must then not be shut down.
    let isShared: Bool
    /// Why the private directory of the bind was left behind, if it was: for the server to log.
    var leftover: String? = nil

    /// Opens the listener `configuration` asks for.
    /// - Throws: ``SocketIPCError``: what ``SocketFileOwner/claim(_:mode:createParentDirectory:requiresSecureParentDirectory:backlog:)``
    ///   throws for a socket file; `invalidConfiguration` for a file option or an open policy on an abstract
    ///   address, or an inherited descriptor that is not a listening Unix stream socket; `addressInUse` for an
    ///   abstract address another process listens on; `systemCall`.
    static func open(_ configuration: ServerConfiguration) throws -> ServerListener {
        if let inherited = configuration.inheritedSocket {
            try inherited.validate()
            let path = try SocketPath(inherited.address ?? configuration.path)
            // Listening already: a connection made before this has the socket's earlier setting, and accept sets it
            // per connection too (see setDescriptorPassing(_:on:)).
            setDescriptorPassing(false, on: inherited.descriptor)
            return ServerListener(descriptor: inherited.descriptor, path: path, owner: nil, isShared: true)
        }
        let path = try SocketPath(configuration.path)
        if path.isAbstract {
            try Self.checkAbstract(configuration, path: path)
            return ServerListener(
                descriptor: try Self.bindAbstract(path, backlog: configuration.backlog),
                path: path,
                owner: nil,
                isShared: false
            )
        }
        let claim = try SocketFileOwner.claim(
            path,
            mode: configuration.mode,
            createParentDirectory: configuration.createParentDirectory,
            requiresSecureParentDirectory: configuration.requiresSecureParentDirectory,
            backlog: configuration.backlog
        )
        return ServerListener(
            descriptor: claim.listeningDescriptor,
            path: path,
            owner: claim.owner,
            isShared: false,
            leftover: claim.leftover
        )
    }

    /// Refuses what makes no sense or is unsafe on an abstract address: file options, and a policy that admits every
    /// process without ``ServerConfiguration/allowsAnyoneOnAbstractAddress``.
    private static func checkAbstract(_ configuration: ServerConfiguration, path: SocketPath) throws {
        if configuration.mode != ServerConfiguration.defaultMode {
            throw SocketIPCError(
                .invalidConfiguration,
                "\(path) is an abstract socket address: it has no file, so no mode (0\(String(configuration.mode, radix: 8))) "
                    + "can protect it; only the authorization policy decides who is served",
                path: path.path
            )
        }
        if configuration.createParentDirectory {
            throw SocketIPCError(
                .invalidConfiguration,
                "\(path) is an abstract socket address: it has no file, so no parent directory to create",
                path: path.path
            )
        }
        if configuration.authorization.admitsEveryone && !configuration.allowsAnyoneOnAbstractAddress {
            throw SocketIPCError(
                .invalidConfiguration,
                "\(path) is an abstract socket address, which any process in this network namespace can connect to "
                    + "(no file mode protects it; containerd's CVE-2020-15257), and the policy \(configuration.authorization) "
                    + "serves everyone: set allowsAnyoneOnAbstractAddress if that is what you mean",
                path: path.path
            )
        }
    }

    /// A socket bound to the abstract address `path`, listening.
    private static func bindAbstract(_ path: SocketPath, backlog: Int32) throws -> Int32 {
        let descriptor = try retryingOnInterrupt("socket", path: path.path) { socket(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0) }
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        setDescriptorPassing(false, on: descriptor)
        if path.withSockAddr({ bind(descriptor, $0, $1) }) != 0 {
            let code = errno
            close(descriptor)
            if code == EADDRINUSE {
                throw SocketIPCError(
                    .addressInUse,
                    "another process listens on the abstract address \(path); stop it or choose another name",
                    path: path.path
                )
            }
            throw SocketIPCError.systemCall("bind", errno: code, path: path.path)
        }
        guard listen(descriptor, backlog) == 0 else {
            let code = errno
            close(descriptor)
            throw SocketIPCError.systemCall("listen", errno: code, path: path.path)
        }
        return descriptor
    }
}
