#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Connects a Unix domain socket to a path with the platform's full `sun_path` (SwiftNIO's own address type stops at
/// 103 bytes everywhere), ready to hand to `ClientBootstrap.withConnectedSocket`.
enum SocketConnector {
    /// Opens a socket and connects it to `path`, retrying while the server's backlog is full, up to `timeout`.
    ///
    /// An abstract address (`@name`) has no owner: any process may bind the name first. Nor has a path where another
    /// user could have made the socket file or a directory on the way (``SharedDirectoryPath``: a socket in `/tmp`
    /// that this user did not make). On either, the server must run as a user of `trustedServerUserIDs` (by default
    /// this process's own user and root), checked with the server's `SO_PEERCRED`, or the connection is closed before
    /// a byte is sent (as D-Bus clients check the bus, and PostgreSQL's `requirepeer`).
    ///
    /// The socket refuses descriptors (`SO_PASSRIGHTS` off, Linux 6.16 and later): the ``DescriptorRelay`` of a
    /// caller that takes them turns passing on once it reads the socket, so that a server it then refuses (or any failure before)
    /// cannot have queued a descriptor that closing the socket would drop in the caller's thread.
    /// - Returns: The connected, non-blocking descriptor; the caller owns it.
    /// - Throws: ``SocketIPCError`` with code `connectionRefused`, `unauthorized` (no permission; or a server on an
    ///   address another user could have taken, running as another user), `timedOut` or `systemCall`.
    static func connect(
        to path: SocketPath,
        timeout: Duration,
        trustedServerUserIDs: Set<UInt32>? = nil
    ) async throws -> Int32 {
        let descriptor = try await Self.connectUnchecked(to: path, timeout: timeout)
        let shared = path.isAbstract ? nil : SharedDirectoryPath.openToOthers(on: path.path)
        guard path.isAbstract || shared != nil else { return descriptor }
        let trusted = trustedServerUserIDs ?? [UInt32(geteuid()), 0]
        guard let server = PeerCredentials.read(descriptor: descriptor), trusted.contains(server.userID) else {
            let who = PeerCredentials.read(descriptor: descriptor).map { "runs as uid \($0.userID) (pid \($0.processID))" }
                ?? "cannot be identified"
            close(descriptor)
            let address =
                shared.map { "the server at \(path) \(who), not as a trusted user (\(Self.describe(trusted))): \(path) is reached through \($0), a directory any user may write to, so another user may have made it; nothing was sent" }
                ?? "the server on the abstract address \(path) \(who), not as a trusted user (\(Self.describe(trusted))): any process can take an abstract name, so this one may not be the server you meant; nothing was sent"
            throw SocketIPCError(.unauthorized, address, path: path.path)
        }
        return descriptor
    }

    /// `uid 0, uid 1000`.
    private static func describe(_ users: Set<UInt32>) -> String {
        users.sorted().map { "uid \($0)" }.joined(separator: ", ")
    }

    private static func connectUnchecked(to path: SocketPath, timeout: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var backoff = Duration.microseconds(100)
        while true {
            // Close-on-exec and non-blocking from the start on Linux, without fcntl(2) calls after it.
            let descriptor = try retryingOnInterrupt("socket") {
                socket(AF_UNIX, systemSocketStream | systemSocketCloseOnExec | systemSocketNonBlocking, 0)
            }
            #if canImport(Darwin)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            SocketSend.preventSignal(on: descriptor)
            #endif
            // Refused until the caller's relay reads the socket, if it ever does (see setDescriptorPassing).
            setDescriptorPassing(false, on: descriptor)
            var result: Int32
            repeat {
                result = path.withSockAddr { systemConnect(descriptor, $0, $1) }
            } while result != 0 && errno == EINTR
            if result == 0 { return descriptor }
            let code = errno
            close(descriptor)
            switch code {
            case EAGAIN:
                // The listen backlog is full: a Unix domain socket connect cannot complete asynchronously, so retry.
                guard ContinuousClock.now < deadline else {
                    throw SocketIPCError(
                        .timedOut,
                        "the server at \(path) did not accept within \(timeout) (its backlog is full)",
                        path: path.path,
                        cause: ConnectionNotMade.notAccepted
                    )
                }
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .milliseconds(10))
            case ENOENT:
                throw SocketIPCError(.connectionRefused, "no server at \(path): the socket file does not exist", path: path.path)
            case ECONNREFUSED:
                throw SocketIPCError(.connectionRefused, "no server is listening on \(path)", path: path.path)
            case EACCES where !path.isAbstract && !Self.directorySearchable(of: path.path):
                throw SocketIPCError(
                    .unauthorized,
                    "no permission to reach \(path): a directory on its path cannot be searched by this process "
                        + "(another user's private directory, or its mode)",
                    path: path.path,
                    cause: ConnectionNotMade.directoryNotSearchable
                )
            case EACCES:
                throw SocketIPCError(
                    .unauthorized,
                    "no permission to connect to \(path): the socket file's mode refuses this process",
                    path: path.path,
                    cause: ConnectionNotMade.permissionDenied
                )
            case EPERM:
                throw SocketIPCError(
                    .unauthorized,
                    "connecting to \(path) was not permitted (EPERM): a security module or the file system refused it",
                    path: path.path,
                    cause: ConnectionNotMade.notPermitted
                )
            default:
                throw SocketIPCError.systemCall("connect", errno: code, path: path.path)
            }
        }
    }

    /// Whether this process (its effective ids) may search the directory that holds `path`, and so reach the file:
    /// `faccessat(2)` with `X_OK` and `AT_EACCESS`, which resolves every directory on the way.
    static func directorySearchable(of path: String) -> Bool {
        let directory = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        return faccessat(AT_FDCWD, directory, X_OK, AT_EACCESS) == 0
    }
}
