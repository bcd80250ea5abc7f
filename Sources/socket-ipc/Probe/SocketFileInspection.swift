import SocketIPC

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything the file system says about a socket path, without connecting: what is at the path (and, for a symbolic
/// link, where it points and what is there), its directory, the server's lock file, the path's length against the
/// `sun_path` limit, and whether this process may connect by the file's permissions.
///
/// `socket-ipc probe` starts from it and adds what a connection tells; ``Diagnosis`` uses it alone to explain why a
/// client's connect failed.
struct SocketFileInspection: Sendable {
    /// The socket path as given.
    let path: String
    /// `lstat(path)`: the entry itself, or why there is none (`ENOENT`, `ENOTDIR`, `EACCES`).
    let entry: Result<FileSummary, SystemErrno>
    /// Where a symbolic link at the path points (its text, as `readlink` gives it).
    let linkTarget: String?
    /// `stat(path)` for a symbolic link: what the link leads to, or why nothing is there.
    let linkDestination: Result<FileSummary, SystemErrno>?
    /// The directory that holds the path.
    let directory: DirectoryInspection
    /// The lock file of a server on this path.
    let lock: LockFileInspection
    /// Whether this process may connect by the file system's permissions: write permission on the socket file and
    /// search permission on the directories on the way (`faccessat(W_OK, AT_EACCESS)`); `nil` when no socket is there.
    let mayConnect: Bool?

    /// Whether the path is an address in Linux's abstract namespace (`@name`): no file, directory or lock file to
    /// look at, and only a connection can tell what is there.
    var isAbstract: Bool { self.path.hasPrefix("@") }

    /// The path's length in bytes (for an abstract address, its name's).
    var pathLength: Int { self.path.utf8.count - (self.isAbstract ? 1 : 0) }
    /// The longest path `sun_path` holds on this platform (107 bytes on Linux, 103 on Darwin).
    var pathLimit: Int { SocketPath.maximumLength }
    /// Whether the path is too long to connect to.
    var isPathTooLong: Bool { self.pathLength > self.pathLimit }

    /// What a client's `connect` would reach: the entry, or what a symbolic link leads to.
    var destination: FileSummary? {
        guard let entry = try? self.entry.get() else { return nil }
        return entry.kind == .symlink ? (try? self.linkDestination?.get()) : entry
    }

    /// Looks at `path`.
    static func inspect(_ path: String) -> SocketFileInspection {
        let entry = FileSummary.of(path)
        var linkTarget: String?
        var linkDestination: Result<FileSummary, SystemErrno>?
        var lockPath = path + ".lock"
        if case .success(let summary) = entry, summary.kind == .symlink {
            linkTarget = Self.readLink(path)
            linkDestination = FileSummary.of(path, followingLinks: true)
            // A server reached through a link was started on the real path, and locks that path's lock file.
            if case .success = linkDestination, let real = DirectoryInspection.realPath(path) { lockPath = real + ".lock" }
        }
        let reached = (try? entry.get()).flatMap { $0.kind == .symlink ? try? linkDestination?.get() : $0 }
        let directory = DirectoryInspection.inspect(
            DirectoryInspection.parent(of: path),
            forOwner: reached?.uid ?? UInt32(geteuid())
        )
        let mayConnect = reached?.kind == .socket ? faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) == 0 : nil
        return SocketFileInspection(
            path: path,
            entry: entry,
            linkTarget: linkTarget,
            linkDestination: linkDestination,
            directory: directory,
            lock: LockFileInspection.inspect(lockPath),
            mayConnect: mayConnect
        )
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { raw in
            raw.withMemoryRebound(to: CChar.self) { readlink(path, $0.baseAddress!, $0.count - 1) }
        }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }
}
