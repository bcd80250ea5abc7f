#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A filesystem path for a Unix domain socket, checked against the `sun_path` limit before any system call.
///
/// `sun_path` holds 108 bytes on Linux and 104 on Darwin, one of which is the terminating NUL, so a path may be
/// at most ``maximumLength`` bytes long (107 on Linux, 103 on Darwin).
public struct SocketPath: Hashable, Sendable, CustomStringConvertible {
    /// The path as given.
    public let path: String

    /// The longest path, in UTF-8 bytes, that fits in `sun_path` on this platform.
    public static var maximumLength: Int {
        MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
    }

    /// Checks `path` and wraps it.
    /// - Parameter path: An absolute or relative filesystem path.
    /// - Throws: `SocketIPCError.Code.invalidPath` if the path is empty, contains a NUL byte, or is longer than
    ///   ``maximumLength`` bytes; the message names the length and the limit.
    public init(_ path: String) throws {
        let length = path.utf8.count
        guard length > 0 else {
            throw SocketIPCError(.invalidPath, "socket path is empty", path: path)
        }
        guard !path.utf8.contains(0) else {
            throw SocketIPCError(.invalidPath, "socket path contains a NUL byte", path: path)
        }
        guard length <= Self.maximumLength else {
            throw SocketIPCError(
                .invalidPath,
                "socket path is \(length) bytes; the limit is \(Self.maximumLength) (sun_path): use a shorter path, "
                    + "for example in /tmp or $XDG_RUNTIME_DIR",
                path: path
            )
        }
        self.path = path
    }

    /// The path.
    public var description: String { self.path }

    /// The directory that holds the socket file.
    var parentDirectory: String {
        guard let slash = self.path.lastIndex(of: "/") else { return "." }
        if slash == self.path.startIndex { return "/" }
        return String(self.path[..<slash])
    }

    /// The socket file's name: the last component of the path.
    var fileName: String {
        guard let slash = self.path.lastIndex(of: "/") else { return self.path }
        return String(self.path[self.path.index(after: slash)...])
    }

    /// The path of the lock file that decides which server owns the socket path.
    var lockFilePath: String { self.path + ".lock" }

    /// The lock file's name in ``parentDirectory``.
    var lockFileName: String { self.fileName + ".lock" }

    /// Calls `body` with this path as a `sockaddr_un`.
    func withSockAddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: self.path.utf8)
            raw[self.path.utf8.count] = 0
        }
        return try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
