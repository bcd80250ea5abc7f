#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns a socket path the way PostgreSQL does: a `flock`ed lock file beside the socket decides which process
/// may bind there, a stale socket left by a dead server is removed, anything that is not a socket is left alone,
/// and on release the socket file is removed only if it is still the one this owner created.
///
/// The kernel drops the `flock` when the owning process dies, so a crashed server never blocks the next one.
final class SocketFileOwner {
    let path: SocketPath
    private var lockDescriptor: Int32
    private var socketIdentity: (device: UInt64, inode: UInt64)?

    /// What ``claim(_:mode:createParentDirectory:)`` created: the owner, and a bound, listening socket.
    struct Claim {
        let owner: SocketFileOwner
        let listeningDescriptor: Int32
    }

    private init(path: SocketPath, lockDescriptor: Int32) {
        self.path = path
        self.lockDescriptor = lockDescriptor
    }

    /// Takes the path: locks it, clears a stale socket, binds, sets `mode`, and listens.
    ///
    /// - Throws: ``SocketIPCError`` with code `parentDirectoryMissing`, `addressInUse`, `pathOccupied` or
    ///   `systemCall`. On error nothing at the path has been changed, except a stale socket file.
    static func claim(
        _ path: SocketPath,
        mode: UInt16,
        createParentDirectory: Bool,
        backlog: Int32
    ) throws -> Claim {
        try Self.ensureParentDirectory(of: path, create: createParentDirectory)
        let owner = SocketFileOwner(path: path, lockDescriptor: try Self.lock(path))
        do {
            try owner.removeStaleSocket()
            let descriptor = try owner.bindAndListen(mode: mode, backlog: backlog)
            return Claim(owner: owner, listeningDescriptor: descriptor)
        } catch {
            owner.release(removeSocket: false)
            throw error
        }
    }

    /// Removes the socket file (if it is still ours) and the lock file, then drops the lock. Safe to call twice.
    func release(removeSocket: Bool = true) {
        guard self.lockDescriptor >= 0 else { return }
        if removeSocket, let identity = self.socketIdentity, let current = Self.identity(of: self.path.path),
            current == identity
        {
            unlink(self.path.path)
        }
        // Unlink the lock file while still holding the lock; `lock(_:)` re-checks the inode, so a server that opened
        // the old file before this unlink will notice and retry with a new one.
        unlink(self.path.lockFilePath)
        close(self.lockDescriptor)
        self.lockDescriptor = -1
    }

    // MARK: - Steps

    private static func ensureParentDirectory(of path: SocketPath, create: Bool) throws {
        let parent = path.parentDirectory
        var info = stat()
        if stat(parent, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw SocketIPCError(
                    .parentDirectoryMissing,
                    "\(parent) is not a directory, so \(path) cannot be created there",
                    path: path.path
                )
            }
            return
        }
        guard errno == ENOENT else { throw SocketIPCError.systemCall("stat", errno: errno, path: parent) }
        guard create else {
            throw SocketIPCError(
                .parentDirectoryMissing,
                "the directory \(parent) does not exist; create it, or let the server create it with mode 0700 "
                    + "(ServerConfiguration.createParentDirectory, socket-ipc serve --create-parent)",
                path: path.path
            )
        }
        try Self.makeDirectories(parent)
    }

    private static func makeDirectories(_ directory: String) throws {
        if directory.isEmpty || directory == "/" || directory == "." { return }
        var info = stat()
        if stat(directory, &info) == 0 { return }
        if let slash = directory.lastIndex(of: "/"), slash != directory.startIndex {
            try Self.makeDirectories(String(directory[..<slash]))
        }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SocketIPCError.systemCall("mkdir", errno: errno, path: directory)
        }
    }

    /// Opens and `flock`s the lock file, making sure the locked file is still the one at the lock path.
    private static func lock(_ path: SocketPath) throws -> Int32 {
        let lockPath = path.lockFilePath
        while true {
            let descriptor = try retryingOnInterrupt("open", path: lockPath) {
                open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            }
            if flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                close(descriptor)
                if code == EWOULDBLOCK || code == EAGAIN {
                    throw SocketIPCError(
                        .addressInUse,
                        "another server is serving on \(path) (its lock file \(lockPath) is held)",
                        path: path.path
                    )
                }
                throw SocketIPCError.systemCall("flock", errno: code, path: lockPath)
            }
            var locked = stat()
            var current = stat()
            if fstat(descriptor, &locked) == 0, stat(lockPath, &current) == 0,
                locked.st_dev == current.st_dev, locked.st_ino == current.st_ino
            {
                return descriptor
            }
            // The previous owner removed the lock file after we opened it: try again with the new one.
            close(descriptor)
        }
    }

    /// Removes a socket file nobody listens on; refuses anything that is not a socket, and a live socket.
    private func removeStaleSocket() throws {
        var info = stat()
        guard lstat(self.path.path, &info) == 0 else {
            if errno == ENOENT { return }
            throw SocketIPCError.systemCall("lstat", errno: errno, path: self.path.path)
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFSOCK else {
            let what =
                switch kind {
                case S_IFDIR: "a directory"
                case S_IFLNK: "a symbolic link"
                case S_IFREG: "a regular file"
                default: "a file that is not a socket"
                }
            throw SocketIPCError(
                .pathOccupied,
                "\(self.path) is \(what), not a socket; it was left untouched: remove it or choose another path",
                path: self.path.path
            )
        }
        // We hold the lock, so no SocketIPC server owns this socket; a process that is not SocketIPC may still be
        // listening on it, so probe before deleting.
        if Self.isListening(self.path) {
            throw SocketIPCError(
                .addressInUse,
                "a process that does not hold \(self.path.lockFilePath) is listening on \(self.path); it was left running",
                path: self.path.path
            )
        }
        if unlink(self.path.path) != 0 && errno != ENOENT {
            throw SocketIPCError.systemCall("unlink", errno: errno, path: self.path.path)
        }
    }

    private static func isListening(_ path: SocketPath) -> Bool {
        let descriptor = socket(AF_UNIX, systemSocketStream, 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        let result = path.withSockAddr { connect(descriptor, $0, $1) }
        return result == 0 || errno == EAGAIN
    }

    private func bindAndListen(mode: UInt16, backlog: Int32) throws -> Int32 {
        let descriptor = try retryingOnInterrupt("socket") { socket(AF_UNIX, systemSocketStream, 0) }
        do {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            // Narrow the socket's mode before bind, so the file never exists wider than asked (bind applies the
            // umask to it); chmod after bind then sets it exactly. Nobody can connect before listen().
            _ = fchmod(descriptor, mode_t(mode))
            try retryingOnInterrupt("bind", path: self.path.path) {
                self.path.withSockAddr { bind(descriptor, $0, $1) }
            }
            try retryingOnInterrupt("chmod", path: self.path.path) { chmod(self.path.path, mode_t(mode)) }
            self.socketIdentity = Self.identity(of: self.path.path)
            try retryingOnInterrupt("listen", path: self.path.path) { listen(descriptor, backlog) }
            return descriptor
        } catch {
            close(descriptor)
            if let identity = self.socketIdentity, Self.identity(of: self.path.path).map({ $0 == identity }) == true {
                unlink(self.path.path)
            }
            self.socketIdentity = nil
            throw error
        }
    }

    private static func identity(of path: String) -> (device: UInt64, inode: UInt64)? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }
}
