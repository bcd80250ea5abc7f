#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension SocketFileOwner {
    /// Opens the directory that is to hold the socket file, creating it (and missing ancestors) with mode `0700`
    /// when asked, and checks that no other user could replace the socket file in it.
    ///
    /// Every later step works relative to the returned descriptor, so a directory renamed or replaced by its path
    /// afterwards does not redirect them.
    ///
    /// - Returns: An open descriptor on the directory (`O_DIRECTORY`, close-on-exec); the caller closes it.
    /// - Throws: ``SocketIPCError``: `invalidPath` when the path names no file in a directory,
    ///   `parentDirectoryMissing`, `insecureDirectory` (see ``DirectorySecurity``), or `systemCall`.
    static func openParentDirectory(of path: SocketPath, create: Bool, requireSecure: Bool) throws -> Int32 {
        let name = path.fileName
        guard !name.isEmpty, name != ".", name != ".." else {
            throw SocketIPCError(
                .invalidPath, "\(path) names a directory, not a socket file in one", path: path.path)
        }
        let parent = path.parentDirectory
        let descriptor = DirectoryCreation.openDirectory(parent)
        if descriptor < 0 && errno == ENOENT && create {
            // Made, opened and checked (as `requireSecure` asks) through the directories it made.
            return try DirectoryCreation.make(parent, requireSecure: requireSecure, socketPath: path)
        }
        guard descriptor >= 0 else {
            let code = errno
            switch code {
            case ENOENT:
                throw SocketIPCError(
                    .parentDirectoryMissing,
                    "the directory \(parent) does not exist; create it, or let the server create it with mode 0700 "
                        + "(ServerConfiguration.createParentDirectory, socket-ipc serve --create-parent)",
                    path: path.path
                )
            case ENOTDIR:
                throw SocketIPCError(
                    .parentDirectoryMissing,
                    "\(parent) is not a directory, so \(path) cannot be created there",
                    path: path.path
                )
            case EACCES:
                throw SocketIPCError(
                    .systemCall,
                    "this process (uid \(geteuid())) may not open the directory \(parent), or one on the way to it "
                        + "(errno \(code)), so \(path) cannot be created there: choose a directory this user can write, "
                        + "such as $XDG_RUNTIME_DIR",
                    path: path.path
                )
            default:
                throw SocketIPCError.systemCall("open", errno: code, path: parent)
            }
        }
        if requireSecure {
            do {
                try DirectorySecurity.check(descriptor: descriptor, path: parent, socketPath: path)
            } catch {
                close(descriptor)
                throw error
            }
        }
        return descriptor
    }
}
