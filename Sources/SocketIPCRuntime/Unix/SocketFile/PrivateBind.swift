#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Makes a listening socket file with an exact mode without ever changing a mode by path at its final name.
///
/// `bind` creates the socket file with the process umask applied, and a `chmod(path)` after it can be redirected by
/// a symbolic link swapped in at the path. Instead, the socket is bound inside a fresh private directory (mode
/// `0700`, made beside the socket path so that a rename stays on one file system), given its mode there with
/// `fchmodat` relative to that directory, made to listen, and only then moved to its name with a rename that never
/// replaces anything (`renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where that is missing). Until the move no
/// other user can reach the file (the directory is private), and from the move on it has its final mode and is
/// already listening.
///
/// On Linux the bind names the private directory through `/proc/self/fd/N/`, so it is exactly the directory just
/// made, whatever happens to names above it, and the address always fits in `sun_path`. Without `/proc` the
/// directory's path is used when it fits.
enum PrivateBind {
    /// A socket bound and listening at its final name.
    struct Bound {
        let descriptor: Int32
        /// The socket file's identity, to recognise it later before removing it.
        let identity: FileStatus.Identity
        /// The private directory's path when it could not be removed after the move (`rmdir` failed), with the
        /// reason, for the server to log: it is left behind, empty, mode `0700`.
        var leftover: String?
    }

    /// Binds, sets `mode`, listens, and moves the socket to `name` in the directory open at `directory`.
    ///
    /// - Parameters:
    ///   - path: The socket path (`directory`'s path and `name`), for messages and the fallback bind address.
    ///   - directory: An open descriptor on the directory that is to hold the socket.
    ///   - name: The socket file's name in that directory.
    ///   - mode: The socket file's permission bits.
    ///   - backlog: The `listen` backlog.
    /// - Throws: ``SocketIPCError``: `addressInUse` when something appeared at the path meanwhile (it is left
    ///   untouched), `invalidPath` when no bind address fits, `systemCall` otherwise. Nothing is left behind.
    static func bind(
        _ path: SocketPath,
        directory: Int32,
        name: String,
        mode: UInt16,
        backlog: Int32
    ) throws -> Bound {
        let scratch = try PrivateDirectory(in: directory, besides: path)
        var removed = false
        defer { if !removed { _ = scratch.remove() } }
        let socketDescriptor = try retryingOnInterrupt("socket", path: path.path) {
            socket(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0)
        }
        do {
            _ = fcntl(socketDescriptor, F_SETFD, FD_CLOEXEC)
            // Before it listens: no connection is made before this (see setDescriptorPassing(_:on:)).
            setDescriptorPassing(false, on: socketDescriptor)
            let address = try scratch.bindAddress(forEntry: PrivateDirectory.entryName, socketPath: path)
            try retryingOnInterrupt("bind", path: path.path) {
                address.withSockAddr { posixBind(socketDescriptor, $0, $1) }
            }
            try retryingOnInterrupt("fchmodat", path: path.path) {
                fchmodat(scratch.descriptor, PrivateDirectory.entryName, mode_t(mode), 0)
            }
            let made = try FileStatus.entry(PrivateDirectory.entryName, in: scratch.descriptor, describedAs: path.path)
            guard let status = made, status.isSocket, status.permissions == mode_t(mode) & 0o7777 else {
                throw SocketIPCError(
                    .systemCall,
                    "bind made no socket file with mode 0\(String(mode, radix: 8)) in the private directory beside "
                        + "\(path)",
                    path: path.path
                )
            }
            try retryingOnInterrupt("listen", path: path.path) { listen(socketDescriptor, backlog) }
            try Self.move(
                from: PrivateDirectory.entryName, in: scratch.descriptor, to: name, in: directory, path: path)
            removed = true
            return Bound(descriptor: socketDescriptor, identity: status.identity, leftover: scratch.remove())
        } catch {
            close(socketDescriptor)
            throw error
        }
    }

    /// Renames `source` to `target` unless something is at `target` already.
    private static func move(
        from source: String,
        in sourceDirectory: Int32,
        to target: String,
        in targetDirectory: Int32,
        path: SocketPath
    ) throws {
        var result = renameWithoutReplacing(sourceDirectory, source, targetDirectory, target)
        var code = result == 0 ? 0 : errno
        if result != 0 && (code == ENOSYS || code == EINVAL || code == ENOTSUP) {
            // No exclusive rename here (an old kernel, or a file system without it): a hard link is just as
            // exclusive, and the private name is removed after it.
            result = linkat(sourceDirectory, source, targetDirectory, target, 0)
            code = result == 0 ? 0 : errno
            if result == 0 { unlinkat(sourceDirectory, source, 0) }
        }
        guard result != 0 else { return }
        if code == EEXIST {
            throw SocketIPCError(
                .addressInUse,
                "something appeared at \(path) while the server was starting (another process created it); it was "
                    + "left untouched",
                path: path.path
            )
        }
        throw SocketIPCError.systemCall("renameat2", errno: code, path: path.path)
    }
}

/// A fresh directory with mode `0700` beside the socket path, open by descriptor, removed with what is in it.
private struct PrivateDirectory {
    /// The socket's name inside the private directory.
    static let entryName = "s"

    let parent: Int32
    let name: String
    let descriptor: Int32
    let identity: FileStatus.Identity
    let parentPath: String

    init(in parent: Int32, besides path: SocketPath) throws {
        var attempts = 0
        while true {
            let name = ".socketipc-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
            if DirectoryCreation.makeDirectory(name, in: parent) {
                self.name = name
                break
            }
            let code = errno
            attempts += 1
            guard (code == EEXIST || code == EINTR) && attempts < 16 else {
                throw SocketIPCError.systemCall("mkdirat", errno: code, path: path.parentDirectory + "/" + name)
            }
        }
        self.parent = parent
        self.parentPath = path.parentDirectory
        let descriptor = openat(parent, self.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            unlinkat(parent, self.name, AT_REMOVEDIR)
            throw SocketIPCError.systemCall("openat", errno: code, path: path.parentDirectory + "/" + self.name)
        }
        self.descriptor = descriptor
        do {
            let status = try FileStatus.of(descriptor: descriptor, describedAs: path.parentDirectory)
            guard status.isDirectory, status.owner == geteuid(), status.permissions & 0o077 == 0 else {
                throw SocketIPCError(
                    .insecureDirectory,
                    "the private directory made for binding \(path) is not private (owner uid \(status.owner), "
                        + "mode \(status.octalPermissions))",
                    path: path.path
                )
            }
            self.identity = status.identity
        } catch {
            close(descriptor)
            unlinkat(parent, self.name, AT_REMOVEDIR)
            throw error
        }
    }

    /// The address to bind `entry` inside this directory at.
    func bindAddress(forEntry entry: String, socketPath: SocketPath) throws -> SocketPath {
        #if os(Linux)
        let throughDescriptor = "/proc/self/fd/\(self.descriptor)"
        if FileStatus.following(throughDescriptor)?.identity == self.identity {
            return try SocketPath(throughDescriptor + "/" + entry)
        }
        #endif
        let direct = (self.parentPath == "/" ? "" : self.parentPath) + "/" + self.name + "/" + entry
        guard direct.utf8.count <= SocketPath.maximumLength else {
            throw SocketIPCError(
                .invalidPath,
                "\(socketPath) is too long to be bound through a private directory beside it (\(direct.utf8.count) "
                    + "bytes; the limit is \(SocketPath.maximumLength)): use a shorter path",
                path: socketPath.path
            )
        }
        return try SocketPath(direct)
    }

    /// Removes the entry left inside (if any) and the directory, then closes it.
    /// - Returns: `nil` once the directory is gone, else its path and why it could not be removed.
    func remove() -> String? {
        unlinkat(self.descriptor, Self.entryName, 0)
        close(self.descriptor)
        var result = unlinkat(self.parent, self.name, AT_REMOVEDIR)
        while result != 0 && errno == EINTR { result = unlinkat(self.parent, self.name, AT_REMOVEDIR) }
        guard result != 0 else { return nil }
        let error = SocketIPCError.systemCall("unlinkat", errno: errno, path: self.parentPath + "/" + self.name)
        return error.message
    }
}

#if canImport(Glibc)
private let posixBind = Glibc.bind
#elseif canImport(Musl)
private let posixBind = Musl.bind
#elseif canImport(Darwin)
private let posixBind = Darwin.bind
#endif

/// `renameat2(..., RENAME_NOREPLACE)` on Linux (looked up at run time: Glibc's Swift module does not export it),
/// `renameatx_np(..., RENAME_EXCL)` on Darwin (untested); sets `errno` to `ENOSYS` where neither exists.
private func renameWithoutReplacing(_ from: Int32, _ source: String, _ to: Int32, _ target: String) -> Int32 {
    #if canImport(Darwin)
    return renameatx_np(from, source, to, target, UInt32(RENAME_EXCL))
    #else
    guard let renameat2 = renameat2Function else {
        errno = ENOSYS
        return -1
    }
    let renameNoReplace: UInt32 = 1  // RENAME_NOREPLACE, <linux/fs.h>
    return renameat2(from, source, to, target, renameNoReplace)
    #endif
}

#if !canImport(Darwin)
private typealias Renameat2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) ->
    Int32

private let renameat2Function: Renameat2? = {
    guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "renameat2") else { return nil }
    return unsafeBitCast(symbol, to: Renameat2.self)
}()
#endif
