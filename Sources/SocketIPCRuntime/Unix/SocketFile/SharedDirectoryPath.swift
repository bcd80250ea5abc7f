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
    /// The first directory on the way to `path` in which another user could have made or replaced the next entry on
    /// the way, named as met (through the symbolic links on the way, if any, resolved); `nil` when there is none.
    ///
    /// Called after the connect, so the path led to a socket then: a name that cannot be examined now, after a
    /// directory others may write to was passed, counts as made by another user (who may have removed it since).
    /// Costs one `lstat` per component, and a `realpath` and a second walk when a symbolic link is met.
    static func openToOthers(on path: String) -> String? {
        let absolute: String
        if path.hasPrefix("/") {
            absolute = path
        } else {
            guard let workingDirectory = DirectorySecurity.realPath(".") else { return nil }
            absolute = workingDirectory + "/" + path
        }
        switch Self.walk(absolute) {
        case .open(let directory): return directory
        case .closed: return nil
        case .symbolicLink(let passed):
            // Every link on the way (the socket's name included) resolved, the directories it really is in.
            guard let resolved = DirectorySecurity.realPath(absolute) else { return passed }
            switch Self.walk(resolved) {
            case .open(let directory): return directory
            case .closed: return passed
            case .symbolicLink(let again): return again ?? passed ?? resolved
            }
        }
    }

    /// What a walk along a path found.
    private enum Walk {
        /// A directory in which another user could have made or replaced the next entry.
        case open(String)
        /// No such directory, as far as the path could be examined.
        case closed
        /// A symbolic link, met after passing the open directory given, if any (whose entry on the way is safe).
        case symbolicLink(passed: String?)
    }

    /// Walks the absolute `path` one component at a time with `lstat`, lexically (`..` drops the last directory),
    /// until the end or a symbolic link.
    private static func walk(_ path: String) -> Walk {
        let trusted: Set<uid_t> = [geteuid(), 0]
        var directory = "/"
        var directoryInfo = stat()
        guard lstat(directory, &directoryInfo) == 0 else { return .closed }
        // A directory others may write to, passed through an entry of a trusted user (sticky): safe so far.
        var passed: String?
        for name in path.split(separator: "/", omittingEmptySubsequences: true).map(String.init) {
            if name == "." { continue }
            if name == ".." {
                if let slash = directory.lastIndex(of: "/") {
                    directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
                }
                guard lstat(directory, &directoryInfo) == 0 else { return passed.map(Walk.open) ?? .closed }
                continue
            }
            let entry = (directory == "/" ? "" : directory) + "/" + name
            let othersMayWrite = directoryInfo.st_mode & S_IWOTH != 0
            if othersMayWrite && directoryInfo.st_mode & S_ISVTX == 0 { return .open(directory) }
            var entryInfo = stat()
            guard lstat(entry, &entryInfo) == 0 else {
                return othersMayWrite ? .open(directory) : passed.map(Walk.open) ?? .closed
            }
            if othersMayWrite {
                guard trusted.contains(entryInfo.st_uid) else { return .open(directory) }
                passed = directory
            }
            if entryInfo.st_mode & S_IFMT == S_IFLNK { return .symbolicLink(passed: passed) }
            directory = entry
            directoryInfo = entryInfo
        }
        return .closed
    }
}
