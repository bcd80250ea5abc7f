#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `mkdir -p` for a socket's parent directory that follows no symbolic link it meets among the directories it
/// makes, and makes nothing below a directory that ``DirectorySecurity`` refuses.
///
/// A plain `mkdir -p` on the path string follows every link on the way: another user's link in `/tmp` (where
/// `fs.protected_symlinks` is off) would have a server started with `createParentDirectory` make directories where
/// that user points it (in `/root`, in `/etc`), before the check of the finished path refused to serve there. So,
/// as systemd's `mkdir_parents_safe` and `chase()` do: the deepest directory that exists is opened and checked
/// first, then each missing one is made with `mkdirat(2)` in the one above it and opened with `O_NOFOLLOW`, so that
/// an entry put in the way meanwhile (a link, a file) is refused instead of followed.
enum DirectoryCreation {
    /// Makes the missing directories of `directory`, each with mode `0700`, and opens the last.
    ///
    /// - Parameters:
    ///   - directory: The directory to make, absolute or relative to the working directory.
    ///   - requireSecure: Whether the deepest directory that exists must pass ``DirectorySecurity/check(descriptor:path:socketPath:)``
    ///     (its ancestors, and every link on the way to it, included) before anything is made in it.
    ///   - socketPath: The socket path the errors concern.
    /// - Throws: ``SocketIPCError``: `insecureDirectory` (from the check, for a directory found already there that
    ///   fails it, or, with `requireSecure`, an entry that is not a directory, such as a symbolic link, where a
    ///   directory is to be made; without it, `parentDirectoryMissing`), `invalidPath` (`..` among the directories
    ///   to make), or `systemCall`. What it made is removed again on error, where it still can be: also when the
    ///   finished directory fails the check of `requireSecure` (its ancestors changed meanwhile).
    /// - Returns: An open descriptor on `directory`, reached through the directories made (not its path again, which
    ///   could lead elsewhere by now), and checked as `requireSecure` asks; the caller closes it.
    static func make(_ directory: String, requireSecure: Bool, socketPath: SocketPath) throws -> Int32 {
        let components = directory.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let absolute = directory.hasPrefix("/")
        var existing = components.count
        var descriptor: Int32 = -1
        var existingPath = ""
        while descriptor < 0 {
            existingPath = Self.path(of: components[..<existing], absolute: absolute)
            descriptor = Self.openDirectory(existingPath)
            if descriptor >= 0 { break }
            let code = errno
            guard code == ENOENT, existing > 0 else {
                throw SocketIPCError.systemCall("open", errno: code, path: existingPath)
            }
            existing -= 1
        }
        // The directories opened on the way, each with the name looked up in it and whether this call made it.
        var holders: [(descriptor: Int32, name: String, made: Bool)] = []
        defer { for holder in holders { close(holder.descriptor) } }
        do {
            if requireSecure {
                try DirectorySecurity.check(descriptor: descriptor, path: existingPath, socketPath: socketPath)
            }
            for index in existing..<components.count {
                let name = components[index]
                let madePath = Self.path(of: components[...index], absolute: absolute)
                guard name != ".." else {
                    // It would lead above the directories checked or made here (a review: `/tmp/new/../../home/x`).
                    throw SocketIPCError(
                        .invalidPath,
                        "\(directory) leaves a directory still to be made through `..`; give the path without it, so "
                            + "that \(socketPath) is not created",
                        path: socketPath.path
                    )
                }
                let made = Self.makeDirectory(name, in: descriptor)
                if !made && errno != EEXIST {
                    throw SocketIPCError.systemCall("mkdir", errno: errno, path: madePath)
                }
                holders.append((descriptor, name, made))
                descriptor = Self.openDirectory(name, in: holders[holders.count - 1].descriptor)
                guard descriptor >= 0 else {
                    let code = errno
                    guard code == ELOOP || code == ENOTDIR else {
                        throw SocketIPCError.systemCall("open", errno: code, path: madePath)
                    }
                    throw SocketIPCError(
                        requireSecure ? .insecureDirectory : .parentDirectoryMissing,
                        "\(madePath) is in the way of the directories to make for \(socketPath): it is a symbolic link "
                            + "or not a directory, and a server that makes its directory follows no link it finds "
                            + "there (another user could have put it there); \(socketPath) was not created",
                        path: socketPath.path
                    )
                }
                // One that was there already (made meanwhile, by whoever could write in the one above) is held to the
                // check the deepest one passed (a review: another user's directory made there between the check and
                // this call).
                if requireSecure && !made {
                    let status = try FileStatus.of(descriptor: descriptor, describedAs: madePath)
                    if let problem = DirectorySecurity.problem(with: status, at: madePath) {
                        throw SocketIPCError(
                            .insecureDirectory,
                            "\(problem); \(socketPath) was not created",
                            path: socketPath.path
                        )
                    }
                }
            }
            // The finished directory, with its ancestors and the links on the way as they are now.
            if requireSecure && !holders.isEmpty {
                try DirectorySecurity.check(descriptor: descriptor, path: directory, socketPath: socketPath)
            }
            return descriptor
        } catch {
            if descriptor >= 0 { close(descriptor) }
            // Newest first: only the directories this call made, each still empty if nobody else wrote there.
            for holder in holders.reversed() where holder.made {
                _ = unlinkat(holder.descriptor, holder.name, AT_REMOVEDIR)
            }
            throw error
        }
    }

    private static func path(of components: ArraySlice<String>, absolute: Bool) -> String {
        let joined = components.joined(separator: "/")
        if absolute { return "/" + joined }
        return joined.isEmpty ? "." : joined
    }

    /// Opens the directory at `path` (following links, as the kernel resolves a path), close-on-exec, retrying on
    /// `EINTR`; -1 with `errno` on failure.
    static func openDirectory(_ path: String) -> Int32 {
        while true {
            let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if descriptor >= 0 || errno != EINTR { return descriptor }
        }
    }

    /// Makes the directory `name` in `directory` with mode `0700`, whatever the process's umask: `mkdirat(2)` applies
    /// the umask, and one that takes the owner's bits (`umask 0700`) made a directory its own maker could not open
    /// (found by a review: `serve` failed with "Permission denied" on its private directory). The mode is set again
    /// without following a link (`AT_SYMLINK_NOFOLLOW`), so an entry swapped in meanwhile is not changed.
    /// - Returns: Whether it was made; if not, `errno` says why (`EEXIST` when something is there).
    static func makeDirectory(_ name: String, in directory: Int32) -> Bool {
        guard mkdirat(directory, name, 0o700) == 0 else { return false }
        // Best effort: where the mode cannot be set, opening the directory fails as it would have.
        _ = fchmodat(directory, name, 0o700, AT_SYMLINK_NOFOLLOW)
        return true
    }

    private static func openDirectory(_ name: String, in directory: Int32) -> Int32 {
        while true {
            let descriptor = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if descriptor >= 0 || errno != EINTR { return descriptor }
        }
    }
}
