// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The directory that holds a socket file: its owner, group and mode, and whether it is safe by the library's rule.
///
/// The rule is the server's (`DirectorySecurity` in SocketIPCRuntime, after OpenSSH's `safe_path`): the directory and
/// every ancestor of its real path must be owned by root or by the server's user, and none may be writable by group or
/// others unless it has the sticky bit. The server's user is taken to be the socket file's owner (the caller when
/// there is no socket file), since that is who the rule protects.
struct DirectoryInspection: Sendable {
    /// The directory's path, as derived from the socket path (`.` for a bare relative name).
    let path: String
    /// What `stat` says about it, or why it could not be examined (`ENOENT`: it does not exist).
    let status: Result<FileSummary, SystemErrno>
    /// Why the directory is unsafe for a server running as the owner; `nil` when it is safe or does not exist.
    let unsafeReason: String?

    /// Looks at the directory `path` on behalf of a server running as `owner`.
    static func inspect(_ path: String, forOwner owner: UInt32) -> DirectoryInspection {
        let status = FileSummary.of(path, followingLinks: true)
        guard case .success(let summary) = status, summary.kind == .directory else {
            return DirectoryInspection(path: path, status: status, unsafeReason: nil)
        }
        return DirectoryInspection(path: path, status: status, unsafeReason: Self.problem(at: path, forOwner: owner))
    }

    /// Whether the directory passes the rule: `nil` when it does not exist or is not a directory.
    var isSafe: Bool? {
        guard case .success(let summary) = self.status, summary.kind == .directory else { return nil }
        return self.unsafeReason == nil
    }

    /// The directory's status, when it could be examined.
    var summary: FileSummary? { try? self.status.get() }

    /// The parent directory of `path`, as `SocketPath.parentDirectory` has it: `.` for a bare name, `/` for `/x`.
    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    /// What makes the directory at `path` (or an ancestor of its real path) unsafe, or `nil` when nothing does.
    private static func problem(at path: String, forOwner owner: UInt32) -> String? {
        guard let resolved = Self.realPath(path) else { return nil }
        var current = resolved
        while true {
            guard case .success(let status) = FileSummary.of(current) else { return nil }
            let name = current == path ? path : "\(current) (on the way to \(path))"
            if status.uid != 0 && status.uid != owner {
                return "\(name) belongs to \(AccountNames.describeUser(status.uid)), not to root or the socket's "
                    + "owner \(AccountNames.describeUser(owner)), who could replace the socket file"
            }
            if status.permissions & 0o022 != 0 && status.permissions & UInt32(S_ISVTX) == 0 {
                return "\(name) (mode \(status.mode)) can be written by other users and has no sticky bit, so they "
                    + "could replace the socket file"
            }
            if current == "/" { return nil }
            current = Self.parent(of: current)
        }
    }

    /// `realpath(path)`: the path with every symbolic link, `.` and `..` resolved; `nil` when it cannot be.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
