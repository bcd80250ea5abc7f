#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The address of a Unix domain socket: a filesystem path, or on Linux `@name` for a socket in the abstract namespace;
/// checked against the `sun_path` limit before any system call.
///
/// `sun_path` holds 108 bytes on Linux and 104 on Darwin, one of which is the terminating NUL, so a path may be
/// at most ``maximumLength`` bytes long (107 on Linux, 103 on Darwin).
///
/// An abstract address (`@name`, as `ss -x`, systemd's `ListenStream=@name` and D-Bus's `unix:abstract=` write it)
/// has no file: `sun_path` starts with a NUL byte and the name follows, its length given by the address length, not
/// by a terminating NUL (unix(7)). Its name may be ``maximumLength`` bytes long. There is no file mode to protect it:
/// any process in the same network namespace can connect (see ``ServerConfiguration/allowsAnyoneOnAbstractAddress``).
/// Linux only: on other systems `@name` is refused.
public struct SocketPath: Hashable, Sendable, CustomStringConvertible {
    /// The path as given; `@name` for an abstract address.
    public let path: String

    /// Whether this is an address in Linux's abstract namespace (`@name`), which has no file.
    public var isAbstract: Bool { self.path.utf8.first == UInt8(ascii: "@") }

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
        if path.utf8.first == UInt8(ascii: "@") {
            #if !os(Linux)
            throw SocketIPCError(.invalidPath, "\(path): abstract socket addresses (@name) exist on Linux only", path: path)
            #else
            guard length > 1 else {
                throw SocketIPCError(.invalidPath, "an abstract socket address needs a name after the @", path: path)
            }
            guard length - 1 <= Self.maximumLength else {
                throw SocketIPCError(
                    .invalidPath,
                    "abstract socket name is \(length - 1) bytes; the limit is \(Self.maximumLength) (sun_path)",
                    path: path
                )
            }
            #endif
        }
        guard length <= Self.maximumLength || path.utf8.first == UInt8(ascii: "@") else {
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

    /// Calls `body` with this path as a `sockaddr_un` and its length: the whole structure for a path (NUL-terminated),
    /// and for an abstract address the offset of `sun_path`, its leading NUL and the name's bytes, as unix(7) and
    /// systemd give it (no trailing NUL: it would be part of the name).
    func withSockAddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let length: socklen_t
        if self.isAbstract {
            let name = self.path.utf8.dropFirst()
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw[0] = 0
                UnsafeMutableRawBufferPointer(rebasing: raw[1...]).copyBytes(from: name)
            }
            let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2
            length = socklen_t(offset + 1 + name.count)
        } else {
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: self.path.utf8)
                raw[self.path.utf8.count] = 0
            }
            length = socklen_t(MemoryLayout<sockaddr_un>.size)
        }
        return try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, length)
            }
        }
    }
}
