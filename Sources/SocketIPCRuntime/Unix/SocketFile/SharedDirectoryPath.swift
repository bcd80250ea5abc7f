#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether another user could have put a socket file (or a directory or link on the way to it) at a path, so that a
/// client cannot take the server there for the one it meant without asking who it is.
///
/// Any user may create an entry in a directory that others may write to, such as `/tmp` or `/dev/shm` (`1777`): a
/// name not yet taken there is anyone's, as an abstract name is. With the sticky bit, only an entry's owner may
/// remove or rename it, so an entry that belongs to this process's effective user or to root is still safe; without
/// it, no entry is. Directories writable by their group only are not counted: their group is trusted with them.
/// This is the client's side of what ``DirectorySecurity`` requires of a server's directory (as OpenSSH's
/// `safe_path`), and what PostgreSQL's `requirepeer` and D-Bus clients check with `SO_PEERCRED`.
enum SharedDirectoryPath {
    /// The first directory on the way to `path` (as given, and as resolved) in which another user could have made or
    /// replaced the next entry on the way; `nil` when there is none, or when the path cannot be examined (the connect
    /// then fails on its own, or nothing there was made by another user).
    static func openToOthers(on path: String) -> String? {
        let absolute: String
        if path.hasPrefix("/") {
            absolute = path
        } else {
            guard let workingDirectory = DirectorySecurity.realPath(".") else { return nil }
            absolute = workingDirectory + "/" + path
        }
        if let found = Self.firstOpenDirectory(on: absolute) { return found }
        // The directories a symbolic link on the way leads to: the socket's real parent, and its ancestors.
        let slash = absolute.lastIndex(of: "/")!
        let parent = slash == absolute.startIndex ? "/" : String(absolute[..<slash])
        guard let resolved = DirectorySecurity.realPath(parent) else { return nil }
        return Self.firstOpenDirectory(on: (resolved == "/" ? "" : resolved) + "/" + absolute[absolute.index(after: slash)...])
    }

    /// Walks the absolute `path` one component at a time, lexically (`..` drops the last directory).
    private static func firstOpenDirectory(on path: String) -> String? {
        let trusted: Set<uid_t> = [geteuid(), 0]
        var directory = "/"
        for name in path.split(separator: "/", omittingEmptySubsequences: true).map(String.init) {
            if name == "." { continue }
            let entry = (directory == "/" ? "" : directory) + "/" + name
            if name != ".." {
                var info = stat()
                guard stat(directory, &info) == 0 else { return nil }
                if info.st_mode & S_IWOTH != 0 {
                    var entryInfo = stat()
                    if info.st_mode & S_ISVTX == 0 { return directory }
                    guard lstat(entry, &entryInfo) == 0 else { return nil }
                    if !trusted.contains(entryInfo.st_uid) { return directory }
                }
                directory = entry
            } else if let slash = directory.lastIndex(of: "/") {
                directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
            }
        }
        return nil
    }
}
