#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The conventional per-user directory for sockets: `$XDG_RUNTIME_DIR` when it is usable, otherwise a private
/// fallback, `/tmp/socketipc-UID`, made with mode `0700` when missing.
///
/// The XDG Base Directory Specification requires `$XDG_RUNTIME_DIR` to be an absolute path to a directory owned by
/// the user with mode `0700`; one that is not (unset, relative, a symbolic link, another user's as after `sudo`, or
/// open to others) is not used, and ``fallbackReason`` says why. The fallback is refused, never repaired, when it
/// exists but is a symbolic link, belongs to another user, or is open to others: another user made it to catch this
/// user's sockets.
///
/// ```swift
/// let path = try SocketPath.inRuntimeDirectory("app.sock")  // /run/user/1000/app.sock
/// ```
public struct RuntimeDirectory: Hashable, Sendable {
    /// Where a runtime directory came from.
    public enum Source: Hashable, Sendable {
        /// `$XDG_RUNTIME_DIR`.
        case environment
        /// The private per-user fallback, `FALLBACK-PARENT/socketipc-UID`.
        case fallback
    }

    /// The directory's absolute path.
    public let path: String
    /// Whether it is `$XDG_RUNTIME_DIR` or the fallback.
    public let source: Source
    /// Why `$XDG_RUNTIME_DIR` was not used (it is unset, or what is wrong with it); `nil` when it was used.
    public let fallbackReason: String?

    /// The runtime directory of this process's effective user.
    ///
    /// - Parameters:
    ///   - environment: The environment to read `XDG_RUNTIME_DIR` from; `nil` (the default) reads the process's.
    ///   - fallbackParent: The directory that holds the fallback; default `/tmp`.
    ///   - create: Whether to create a missing fallback (mode `0700`); default `true`. When `false`, a missing
    ///     fallback's path is returned as it would be.
    /// - Returns: The directory, checked: owned by this process's effective user and closed to everyone else.
    /// - Throws: `SocketIPCError` with code `insecureDirectory` when the fallback exists but is a symbolic link,
    ///   not a directory, another user's, or open to group or others; `systemCall` when it cannot be made or
    ///   examined.
    public static func current(
        environment: [String: String]? = nil,
        fallbackParent: String = "/tmp",
        create: Bool = true
    ) throws -> RuntimeDirectory {
        let variable = environment.map { $0["XDG_RUNTIME_DIR"] } ?? getenv("XDG_RUNTIME_DIR").map { String(cString: $0) }
        let reason: String
        if let variable, !variable.isEmpty {
            if let problem = Self.problem(with: variable) {
                reason = "XDG_RUNTIME_DIR=\(variable) is not used: \(problem)"
            } else {
                return RuntimeDirectory(path: variable, source: .environment, fallbackReason: nil)
            }
        } else {
            reason = "XDG_RUNTIME_DIR is not set"
        }
        let parent = fallbackParent.hasSuffix("/") ? String(fallbackParent.dropLast()) : fallbackParent
        let fallback = parent + "/socketipc-\(geteuid())"
        if create {
            if mkdir(fallback, 0o700) == 0 {
                // Whatever the umask (one that takes the owner's bits made a directory its maker could not use), as
                // DirectoryCreation.makeDirectory does.
                _ = fchmodat(AT_FDCWD, fallback, 0o700, AT_SYMLINK_NOFOLLOW)
            } else if errno != EEXIST {
                throw SocketIPCError.systemCall("mkdir", errno: errno, path: fallback)
            }
        }
        var info = stat()
        if lstat(fallback, &info) != 0 {
            let code = errno
            if code == ENOENT && !create {
                return RuntimeDirectory(path: fallback, source: .fallback, fallbackReason: reason)
            }
            throw SocketIPCError.systemCall("lstat", errno: code, path: fallback)
        }
        if let problem = Self.problem(with: FileStatus(info), at: fallback) {
            throw SocketIPCError(
                .insecureDirectory,
                "the runtime directory \(problem), so it was not used (\(reason)): remove it if you did not make "
                    + "it, or set XDG_RUNTIME_DIR to a directory of your own with mode 0700",
                path: fallback
            )
        }
        return RuntimeDirectory(path: fallback, source: .fallback, fallbackReason: reason)
    }

    /// The path of the socket file `name` in this directory.
    /// - Parameter name: A file name: not empty, no `/`, not `.` or `..`.
    /// - Throws: `SocketIPCError.Code.invalidPath` for a name that is not a plain file name, or a path longer than
    ///   ``SocketPath/maximumLength``.
    public func socketPath(_ name: String) throws -> SocketPath {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw SocketIPCError(
                .invalidPath, "\"\(name)\" is not a file name for a socket in \(self.path)", path: name)
        }
        return try SocketPath(self.path + "/" + name)
    }

    /// What is wrong with `$XDG_RUNTIME_DIR` set to `path`, or `nil` when it may be used.
    private static func problem(with path: String) -> String? {
        guard path.hasPrefix("/") else { return "it is not an absolute path" }
        var info = stat()
        guard lstat(path, &info) == 0 else { return "\(errnoDescription(errno)) (errno \(errno))" }
        return Self.problem(with: FileStatus(info), at: path).map { "the directory \($0)" }
    }

    /// What is wrong with a runtime directory with `status`, or `nil` when it is a directory of this user's that
    /// nobody else may enter.
    private static func problem(with status: FileStatus, at path: String) -> String? {
        let description = "\(path) (owner uid \(status.owner), mode \(status.octalPermissions))"
        if !status.isDirectory { return "\(description) is \(status.kindDescription), not a directory" }
        if status.owner != geteuid() {
            return "\(description) belongs to another user; this process runs as uid \(geteuid())"
        }
        if status.permissions & 0o077 != 0 { return "\(description) is open to group or others; it must be 0700" }
        return nil
    }
}

extension SocketPath {
    /// The socket file `name` in this user's runtime directory: `$XDG_RUNTIME_DIR/name`, or
    /// `/tmp/socketipc-UID/name` (the directory made with mode `0700` if missing) when `$XDG_RUNTIME_DIR` is unset
    /// or unusable. See ``RuntimeDirectory``.
    ///
    /// - Parameter name: A file name: not empty, no `/`, not `.` or `..`.
    /// - Throws: `SocketIPCError`: `invalidPath` for a bad name or a path too long for `sun_path`;
    ///   `insecureDirectory` when the fallback directory exists but another user could use it; `systemCall`.
    public static func inRuntimeDirectory(_ name: String) throws -> SocketPath {
        try RuntimeDirectory.current().socketPath(name)
    }
}
