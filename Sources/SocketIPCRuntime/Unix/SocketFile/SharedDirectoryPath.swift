import Synchronization

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
        let slash = absolute.lastIndex(of: "/")!
        let parent = slash == absolute.startIndex ? "/" : String(absolute[..<slash])
        if let known = Self.closedDirectories.withLock({ $0[parent] }), Self.snapshot(of: parent) == known {
            // The directory is as it was; the socket's name, a link, may still lead elsewhere.
            var info = stat()
            if lstat(absolute, &info) == 0, info.st_mode & S_IFMT != S_IFLNK { return nil }
        }
        switch Self.walk(absolute) {
        case .open(let directory): return directory
        case .closed(let byTrustedUsersOnly):
            if byTrustedUsersOnly, let snapshot = Self.snapshot(of: parent) {
                Self.closedDirectories.withLock { known in
                    if known.count >= Self.closedDirectoriesKept { known.removeAll() }
                    known[parent] = snapshot
                }
            }
            return nil
        case .symbolicLink(let passed):
            // Every link on the way (the socket's name included) resolved, the directories it really is in.
            // A path that cannot be resolved now (longer than PATH_MAX, or changed since the connect) counts as
            // another user's: the connect followed it to somebody's socket (found by a review: a chain of links
            // under /run/lock that realpath cannot resolve passed unchecked).
            guard let resolved = DirectorySecurity.realPath(absolute) else { return passed ?? parent }
            switch Self.walk(resolved) {
            case .open(let directory): return directory
            case .closed: return passed
            case .symbolicLink(let again): return again ?? passed ?? resolved
            }
        }
    }

    /// Directories whose paths were found closed to other users (``Walk/closed(byTrustedUsersOnly:)`` with `true`),
    /// by path, with what the directory was then (``Snapshot``): a connect to a socket in one of them looks at the
    /// directory and the socket's name alone (two `lstat`s; a link is followed as before) instead of every component
    /// (the seed workload's connects cost 4 `lstat`s more each). Only this process's user and root own, and so may
    /// change, any entry on such a path; a directory replaced, or changed, since is walked again.
    private static let closedDirectories = Mutex<[String: Snapshot]>([:])

    /// The most paths ``closedDirectories`` keeps; past it, it starts again.
    private static var closedDirectoriesKept: Int { 64 }

    /// What a directory was when its path was found closed to others: its identity, owner, mode and status change
    /// time (`st_ctim`, which creating, renaming, `chmod`, `chown` and any change of its entries set).
    ///
    /// The identity alone does not tell a directory from one made since at the same path: file systems reuse inode
    /// numbers at once (found by a review: on ext4 a directory removed from `/tmp` and made again by another user
    /// came back with the same inode number, three times in three, and a long-running client's next connect to a
    /// server of that user's skipped the check of who it is).
    struct Snapshot: Equatable {
        let identity: FileStatus.Identity
        let owner: uid_t
        let mode: mode_t
        let changeSeconds: Int
        let changeNanoseconds: Int
    }

    /// The ``Snapshot`` of what `path` names, not following a last symbolic link; `nil` when it cannot be examined.
    private static func snapshot(of path: String) -> Snapshot? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        #if canImport(Darwin)
        let change = info.st_ctimespec  // Darwin: untested
        #else
        let change = info.st_ctim
        #endif
        return Snapshot(
            identity: FileStatus.Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)),
            owner: info.st_uid,
            mode: info.st_mode,
            changeSeconds: Int(change.tv_sec),
            changeNanoseconds: Int(change.tv_nsec)
        )
    }

    /// What a walk along a path found.
    private enum Walk {
        /// A directory in which another user could have made or replaced the next entry.
        case open(String)
        /// No such directory, as far as the path could be examined; `byTrustedUsersOnly` when it was examined to its
        /// end, every component belongs to this process's user or root, and the socket's own directory is closed to
        /// others (so that another name in it is safe too).
        case closed(byTrustedUsersOnly: Bool)
        /// A symbolic link, met after passing the open directory given, if any (whose entry on the way is safe).
        case symbolicLink(passed: String?)
    }

    /// Walks the absolute `path` one component at a time with `lstat`, lexically (`..` drops the last directory),
    /// until the end or a symbolic link.
    private static func walk(_ path: String) -> Walk {
        let trusted: Set<uid_t> = [geteuid(), 0]
        var directory = "/"
        var directoryInfo = stat()
        guard lstat(directory, &directoryInfo) == 0 else { return .closed(byTrustedUsersOnly: false) }
        var byTrustedUsersOnly = trusted.contains(directoryInfo.st_uid)
        var parentOpen = false
        // A directory others may write to, passed through an entry of a trusted user (sticky): safe so far.
        var passed: String?
        for name in path.split(separator: "/", omittingEmptySubsequences: true).map(String.init) {
            if name == "." { continue }
            if name == ".." {
                if let slash = directory.lastIndex(of: "/") {
                    directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
                }
                guard lstat(directory, &directoryInfo) == 0 else {
                    return passed.map(Walk.open) ?? .closed(byTrustedUsersOnly: false)
                }
                continue
            }
            let entry = (directory == "/" ? "" : directory) + "/" + name
            let othersMayWrite = directoryInfo.st_mode & S_IWOTH != 0
            // The socket's own directory must be closed to others as well: in /tmp, another name is anyone's.
            parentOpen = othersMayWrite
            if othersMayWrite && directoryInfo.st_mode & S_ISVTX == 0 { return .open(directory) }
            var entryInfo = stat()
            guard lstat(entry, &entryInfo) == 0 else {
                return othersMayWrite ? .open(directory) : passed.map(Walk.open) ?? .closed(byTrustedUsersOnly: false)
            }
            byTrustedUsersOnly = byTrustedUsersOnly && trusted.contains(entryInfo.st_uid)
            if othersMayWrite {
                guard trusted.contains(entryInfo.st_uid) else { return .open(directory) }
                passed = directory
            }
            if entryInfo.st_mode & S_IFMT == S_IFLNK { return .symbolicLink(passed: passed) }
            directory = entry
            directoryInfo = entryInfo
        }
        return .closed(byTrustedUsersOnly: byTrustedUsersOnly && !parentOpen)
    }
}
