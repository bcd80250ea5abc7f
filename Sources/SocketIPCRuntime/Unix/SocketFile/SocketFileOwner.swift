import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns a socket path the way PostgreSQL does: a `flock`ed lock file beside the socket decides which process
/// may bind there, a stale socket left by a dead server is removed, anything that is not a socket is left alone,
/// and on release the socket file and the lock file are removed only if they are still the ones this owner made.
///
/// The kernel drops the `flock` when the owning process dies, so a crashed server never blocks the next one.
///
/// What it guarantees, whatever other processes do:
/// - Another process's socket is never removed: only a socket whose probe is refused (`ECONNREFUSED`) and that
///   belongs to this process's user is stale. See ``LivenessProbe``.
/// - The socket file is never reachable with a mode wider than configured, and no mode is ever changed by path.
///   See ``PrivateBind``.
/// - With `requiresSecureParentDirectory`, no other user can replace the socket file. See ``DirectorySecurity``.
/// - Every step after opening the parent directory works relative to its descriptor and never follows a symbolic
///   link at the socket's or the lock file's name.
///
/// While the server runs, ``refreshTimestamps()`` keeps both files looking used to a cleaner of old files, such as
/// systemd-tmpfiles aging `/tmp` (10 days by default): it spares a live socket only if `/proc/net/unix` lists it by
/// its path, which lists the private path the socket was bound at (``PrivateBind``), and it would take the lock file,
/// whose times never change otherwise, letting a second server claim the path (found by a review).
final class SocketFileOwner: @unchecked Sendable {
    let path: SocketPath
    private let directoryDescriptor: Int32
    /// Guards ``lockDescriptor``: ``refreshTimestamps()`` runs on an event loop, ``release(removeSocket:)`` where the
    /// server ends.
    private let access = Mutex(())
    private var lockDescriptor: Int32
    private let lockIdentity: FileStatus.Identity
    private var socketIdentity: FileStatus.Identity?

    /// What ``claim(_:mode:createParentDirectory:requiresSecureParentDirectory:backlog:)`` created: the owner, and a
    /// bound, listening socket.
    struct Claim {
        let owner: SocketFileOwner
        let listeningDescriptor: Int32
        /// Why the private directory of the bind was left behind, if it was (see ``PrivateBind/Bound/leftover``).
        let leftover: String?
    }

    private init(path: SocketPath, directoryDescriptor: Int32, lock: (descriptor: Int32, identity: FileStatus.Identity)) {
        self.path = path
        self.directoryDescriptor = directoryDescriptor
        self.lockDescriptor = lock.descriptor
        self.lockIdentity = lock.identity
    }

    /// Takes the path: checks its directory, locks the path, clears a stale socket, and binds and listens with
    /// exactly `mode`.
    ///
    /// - Parameters:
    ///   - path: The socket path.
    ///   - mode: The socket file's permission bits, applied whatever the umask.
    ///   - createParentDirectory: Whether to create a missing parent directory (and its missing ancestors) with
    ///     mode `0700`.
    ///   - requiresSecureParentDirectory: Whether to refuse a parent directory (or an ancestor of it) that another
    ///     user could use to replace the socket file; default `true`.
    ///   - backlog: The `listen` backlog.
    /// - Throws: ``SocketIPCError`` with code `invalidPath`, `parentDirectoryMissing`, `insecureDirectory`,
    ///   `addressInUse` (the message names why the path may be in use), `pathOccupied` or `systemCall`. On error
    ///   nothing at the path has been changed, except a stale socket file of this user.
    static func claim(
        _ path: SocketPath,
        mode: UInt16,
        createParentDirectory: Bool,
        requiresSecureParentDirectory: Bool = true,
        backlog: Int32
    ) throws -> Claim {
        let directory = try Self.openParentDirectory(
            of: path, create: createParentDirectory, requireSecure: requiresSecureParentDirectory)
        let lock: (descriptor: Int32, identity: FileStatus.Identity)
        do {
            lock = try Self.lock(path, in: directory)
        } catch {
            close(directory)
            throw error
        }
        let owner = SocketFileOwner(path: path, directoryDescriptor: directory, lock: lock)
        do {
            try owner.removeStaleSocket()
            let bound = try PrivateBind.bind(
                path, directory: directory, name: path.fileName, mode: mode, backlog: backlog)
            owner.socketIdentity = bound.identity
            return Claim(owner: owner, listeningDescriptor: bound.descriptor, leftover: bound.leftover)
        } catch {
            owner.release(removeSocket: false)
            throw error
        }
    }

    /// Removes the socket file and the lock file, each only if it is still the one this owner made, then drops the
    /// lock. Safe to call twice.
    func release(removeSocket: Bool = true) {
        self.access.withLock { _ in
            guard self.lockDescriptor >= 0 else { return }
            // Each file only if it is still the one this owner made. The socket file's inode cannot be reused while the
            // server listens (the bound socket holds it): its identity tells it from another made at the name since.
            // (Its status change time would not do: a `chown` or `touch` by an administrator changes it, and the
            // socket left behind as another user's would stop the next start, found by a review.)
            if removeSocket, let identity = self.socketIdentity,
                let current = try? FileStatus.entry(self.path.fileName, in: self.directoryDescriptor, describedAs: self.path.path),
                current.identity == identity
            {
                unlinkat(self.directoryDescriptor, self.path.fileName, 0)
            }
            // Unlink the lock file while still holding the lock; `lock(_:in:)` re-checks the inode, so a server that
            // opened the old file before this unlink will notice and retry with a new one. A lock file that is no
            // longer ours (this one has no name left: removed by someone, and a successor made and locked a new one,
            // perhaps with the same inode number) is left to its owner.
            if let held = try? FileStatus.of(descriptor: self.lockDescriptor, describedAs: self.path.lockFilePath),
                held.linkCount > 0,
                let current = try? FileStatus.entry(
                    self.path.lockFileName, in: self.directoryDescriptor, describedAs: self.path.lockFilePath),
                current.identity == self.lockIdentity
            {
                unlinkat(self.directoryDescriptor, self.path.lockFileName, 0)
            }
            close(self.lockDescriptor)
            self.lockDescriptor = -1
            close(self.directoryDescriptor)
        }
    }

    /// Sets the access and modification times of the lock file and of the socket file (a socket with the identity
    /// of the one this owner made) to now, so that a cleaner of files unused for long leaves them while the server
    /// runs (systemd tmpfiles.d(5) ages by those times; it would not see the socket as live, see above). Does nothing
    /// once released.
    /// - Returns: `false` when the socket file at the path is no longer the one this owner made (removed by hand or
    ///   by a cleaner, or replaced): clients can no longer reach the server there. `true` otherwise, and once released.
    @discardableResult
    func refreshTimestamps() -> Bool {
        self.access.withLock { _ in
            guard self.lockDescriptor >= 0 else { return true }
            _ = futimens(self.lockDescriptor, nil)
            let name = self.path.fileName
            guard let identity = self.socketIdentity else { return true }
            let current: FileStatus?
            do {
                current = try FileStatus.entry(name, in: self.directoryDescriptor, describedAs: self.path.path)
            } catch {
                return true  // Cannot tell (a failed fstatat): not reported as gone.
            }
            guard let current, current.isSocket, current.identity == identity else { return false }
            _ = utimensat(self.directoryDescriptor, name, nil, AT_SYMLINK_NOFOLLOW)
            return true
        }
    }

    // MARK: - Steps

    /// Opens and `flock`s the lock file, making sure the locked file is still the one at the lock path.
    private static func lock(
        _ path: SocketPath,
        in directory: Int32
    ) throws -> (descriptor: Int32, identity: FileStatus.Identity) {
        let lockPath = path.lockFilePath
        let name = path.lockFileName
        while true {
            // O_NOFOLLOW: a symbolic link at the lock path is never followed; O_NONBLOCK: a FIFO there never blocks.
            let descriptor = openat(directory, name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o600)
            if descriptor < 0 {
                let code = errno
                if code == EINTR { continue }
                // In a sticky directory, Linux answers EACCES rather than ELOOP for another user's symbolic link
                // (fs.protected_symlinks) or file (fs.protected_regular): look at what is there to say which.
                let entry = code == ELOOP || code == EACCES || code == EPERM
                    ? try? FileStatus.entry(name, in: directory, describedAs: lockPath) : nil
                if code == ELOOP || entry?.isSymbolicLink == true {
                    throw SocketIPCError(
                        .pathOccupied,
                        "the lock file path \(lockPath) is a symbolic link; it was left untouched: remove it or "
                            + "choose another path",
                        path: path.path
                    )
                }
                if let entry {
                    // A file this process may not open: another user's (refused below in any case), or one of its
                    // own without write permission.
                    try Self.requireOwnLockFile(entry, lockPath: lockPath, path: path)
                    throw SocketIPCError(
                        .pathOccupied,
                        "the lock file \(lockPath) (mode \(entry.octalPermissions)) cannot be opened for writing by "
                            + "this process; it was left untouched: remove it or choose another path",
                        path: path.path
                    )
                }
                throw SocketIPCError(
                    .systemCall,
                    "the lock file \(lockPath) cannot be created: \(errnoDescription(code)) (errno \(code)); the "
                        + "server keeps it beside its socket file, so the directory must be one this user can write",
                    path: path.path
                )
            }
            let status: FileStatus
            do {
                status = try FileStatus.of(descriptor: descriptor, describedAs: lockPath)
                try Self.requireOwnLockFile(status, lockPath: lockPath, path: path)
            } catch {
                close(descriptor)
                throw error
            }
            if flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                let holderID = Self.processID(in: descriptor)
                let holder = holderID.map { ", by process \($0)" } ?? ""
                close(descriptor)
                if code == EWOULDBLOCK || code == EAGAIN {
                    // A lock file others may open can be held by any of them, not only by a server of ours.
                    let others = status.permissions & 0o077 != 0
                        ? "; its mode \(status.octalPermissions) lets other users open it and hold its lock: if no "
                            + "server of yours runs, remove it (servers create it with mode 0600)"
                        : ""
                    // The holder's socket file removed by hand: it serves no one, and only its stop frees the path
                    // (found by a review: the message said only that another server serves there).
                    let socketFileGone: Bool
                    do {
                        socketFileGone = try FileStatus.entry(path.fileName, in: directory, describedAs: path.path) == nil
                    } catch {
                        socketFileGone = false
                    }
                    if socketFileGone {
                        throw SocketIPCError(
                            .addressInUse,
                            "a server that can no longer be reached still holds \(path): its lock file \(lockPath) is "
                                + "held\(holder), but its socket file was removed; stop that server"
                                + "\(holderID.map { " (process \($0))" } ?? "") and start again\(others)",
                            path: path.path
                        )
                    }
                    throw SocketIPCError(
                        .addressInUse,
                        "another server is serving on \(path) (its lock file \(lockPath) is held\(holder))\(others)",
                        path: path.path
                    )
                }
                if code == EINTR { continue }
                throw SocketIPCError.systemCall("flock", errno: code, path: lockPath)
            }
            if let current = try? FileStatus.entry(name, in: directory, describedAs: lockPath),
                current.identity == status.identity
            {
                // A lock file others may open (made by something else than a server, which makes it 0600) lets them
                // hold its lock while this server is down: from now on only this user may.
                if status.permissions & 0o077 != 0 { _ = fchmod(descriptor, 0o600) }
                Self.record(processIDIn: descriptor)
                return (descriptor, status.identity)
            }
            // The previous owner removed the lock file after we opened it: try again with the new one.
            close(descriptor)
        }
    }

    /// Writes this process's id into the locked lock file, as PostgreSQL's `postmaster.pid` does, so that a server
    /// refused the path can say which process holds it. Best effort: the lock, not the text, decides.
    private static func record(processIDIn descriptor: Int32) {
        let text = Array("\(getpid())\n".utf8)
        guard ftruncate(descriptor, 0) == 0 else { return }
        _ = text.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
    }

    /// The process id written in a lock file, if it holds one.
    private static func processID(in descriptor: Int32) -> Int32? {
        var bytes = [UInt8](repeating: 0, count: 16)
        let count = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        let text = String(decoding: bytes[..<count], as: UTF8.self)
        guard let line = text.split(separator: "\n").first, let pid = Int32(line), pid > 0 else { return nil }
        return pid
    }

    private static func requireOwnLockFile(_ status: FileStatus, lockPath: String, path: SocketPath) throws {
        guard status.isRegularFile else {
            throw SocketIPCError(
                .pathOccupied,
                "the lock file path \(lockPath) is \(status.kindDescription), not a regular file; it was left "
                    + "untouched: remove it or choose another path",
                path: path.path
            )
        }
        guard status.owner == geteuid() else {
            throw SocketIPCError(
                .pathOccupied,
                "the lock file \(lockPath) belongs to uid \(status.owner), not to this process's uid \(geteuid()), "
                    + "so that user decides who serves on \(path); it was left untouched: remove it if no server of "
                    + "that user uses it, or choose another path",
                path: path.path
            )
        }
        // A second name for the file means someone linked another file of ours to the lock path (possible where
        // `fs.protected_hardlinks` is off): writing our pid into it would overwrite that file.
        guard status.linkCount == 1 else {
            throw SocketIPCError(
                .pathOccupied,
                "the lock file \(lockPath) has \(status.linkCount) names (hard links), so it may be another file of "
                    + "this user; it was left untouched: remove it or choose another path",
                path: path.path
            )
        }
    }

    /// Removes a socket file of this user that nobody listens on; refuses anything that is not a socket, a socket
    /// that may be live, and another user's socket.
    private func removeStaleSocket() throws {
        let name = self.path.fileName
        guard let status = try FileStatus.entry(name, in: self.directoryDescriptor, describedAs: self.path.path) else {
            return
        }
        guard status.isSocket else {
            throw SocketIPCError(
                .pathOccupied,
                "\(self.path) is \(status.kindDescription), not a socket; it was left untouched: remove it or choose "
                    + "another path",
                path: self.path.path
            )
        }
        // We hold the lock, so no SocketIPC server owns this socket; a process that is not SocketIPC may still be
        // listening on it, so probe before deleting.
        switch try LivenessProbe.probe(self.path) {
        case .gone:
            return
        case .maybeLive(let reason):
            throw SocketIPCError(
                .addressInUse,
                "\(self.path) is in use: \(reason); it was left untouched (this process holds "
                    + "\(self.path.lockFilePath), so it is a process that is not SocketIPC, or a SocketIPC server whose "
                    + "lock file was removed by hand or by a cleaner): stop that process, or choose another path",
                path: self.path.path
            )
        case .stale:
            break
        }
        guard status.owner == geteuid() else {
            throw SocketIPCError(
                .pathOccupied,
                "\(self.path) is a stale socket of uid \(status.owner), not of this process's uid \(geteuid()); it "
                    + "was left untouched: remove it, or choose another path",
                path: self.path.path
            )
        }
        // Remove only the file that was probed: one that replaced it meanwhile is someone else's.
        guard let current = try FileStatus.entry(name, in: self.directoryDescriptor, describedAs: self.path.path)
        else { return }
        guard current.identity == status.identity else {
            throw SocketIPCError(
                .addressInUse,
                "\(self.path) was replaced while the server was starting; the new file was left untouched",
                path: self.path.path
            )
        }
        if unlinkat(self.directoryDescriptor, name, 0) != 0 && errno != ENOENT {
            throw SocketIPCError.systemCall("unlink", errno: errno, path: self.path.path)
        }
    }
}
