#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether a directory could let another user replace the socket file in it, checked the way OpenSSH's
/// `safe_path` checks an agent socket's directory: the directory and every ancestor of its real path must be owned
/// by root or by this process's effective user, and none may be writable by others unless it has the sticky bit
/// (as `/tmp` has, `1777`: there only an entry's owner may remove or rename it).
///
/// A directory that fails lets another user unlink the socket file, or rename a directory on the way to it, and
/// put their own listener where clients look for this server's.
enum DirectorySecurity {
    /// Checks the directory open at `descriptor` (reached through `path`) and every ancestor of its real path.
    ///
    /// - Parameters:
    ///   - descriptor: An open descriptor on the directory; its identity must match what `path` resolves to.
    ///   - path: The directory's path as configured, for `realpath` and for messages.
    ///   - socketPath: The socket path the error concerns.
    /// - Throws: ``SocketIPCError`` with code `insecureDirectory` naming the directory, its owner and mode, and how
    ///   to opt out; `systemCall` when a directory cannot be examined.
    static func check(descriptor: Int32, path: String, socketPath: SocketPath) throws {
        let opened = try FileStatus.of(descriptor: descriptor, describedAs: path)
        guard let resolved = Self.realPath(path) else {
            throw SocketIPCError.systemCall("realpath", errno: errno, path: path)
        }
        guard let named = FileStatus.following(resolved), named.identity == opened.identity else {
            throw SocketIPCError(
                .insecureDirectory,
                "the directory \(path) was replaced while it was being checked; the socket \(socketPath) was not "
                    + "created",
                path: socketPath.path
            )
        }
        try Self.require(opened, at: resolved == path ? path : "\(resolved) (reached as \(path))", socketPath: socketPath)
        var current = resolved
        while current != "/" {
            current = Self.parent(of: current)
            var info = stat()
            guard lstat(current, &info) == 0 else {
                throw SocketIPCError.systemCall("lstat", errno: errno, path: current)
            }
            try Self.require(FileStatus(info), at: current, socketPath: socketPath)
        }
    }

    /// Why a directory with `status` is unsafe for this process's sockets, or `nil` when it is safe.
    static func problem(with status: FileStatus, at path: String) -> String? {
        let me = geteuid()
        let description = "\(path) (owner uid \(status.owner), mode \(status.octalPermissions))"
        if !status.isDirectory {
            return "\(description) is \(status.kindDescription), not a directory"
        }
        if status.owner != 0 && status.owner != me {
            return "the directory \(description) belongs to another user, who could replace the socket file; "
                + "this process runs as uid \(me)"
        }
        if status.othersMayReplaceEntries {
            return "the directory \(description) can be written by other users and has no sticky bit, so they "
                + "could replace the socket file"
        }
        return nil
    }

    private static func require(_ status: FileStatus, at path: String, socketPath: SocketPath) throws {
        guard let problem = Self.problem(with: status, at: path) else { return }
        throw SocketIPCError(
            .insecureDirectory,
            "\(problem); \(socketPath) was not created: use a directory only you (or root) can write, such as "
                + "$XDG_RUNTIME_DIR, or opt out if you trust the directory anyway "
                + "(ServerConfiguration.requiresSecureParentDirectory = false; socket-ipc serve --allow-insecure-directory)",
            path: socketPath.path
        )
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }
}
