#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A listening socket this process inherited from a service manager (systemd's socket activation, launchd), served
/// by a ``Server`` instead of one it creates: ``ServerConfiguration/init(inheritedSocket:)``.
///
/// The server never creates, changes the mode of, locks or removes the socket's file: the service manager owns it.
/// When the server stops it closes its own descriptor without shutting the socket down, so the manager keeps
/// listening and can start the server again on the next connection. It closes it on a closing thread of its own
/// (usually at once, as `Server.run()` returns): where the server held the last descriptor, that close drops the
/// connections still waiting in the socket's backlog with whatever their peers passed, and must not hold
/// `Server.run()` for a lingering socket among them.
public struct InheritedSocket: Sendable, Hashable, CustomStringConvertible {
    /// The listening descriptor; it must be an `AF_UNIX` `SOCK_STREAM` socket that listens (the server checks).
    public let descriptor: Int32
    /// Its name: the `LISTEN_FDNAMES` entry (systemd's `FileDescriptorName=`, by default the socket unit's name), or
    /// `unknown` as `sd_listen_fds_with_names(3)` gives when there is none.
    public let name: String

    /// Wraps `descriptor`, inherited by other means than ``SocketActivation``.
    public init(descriptor: Int32, name: String = "unknown") {
        self.descriptor = descriptor
        self.name = name
    }

    /// The address the socket is bound to, from `getsockname(2)`: its path, `@name` for an abstract address, or `nil`
    /// when it is not a bound Unix domain socket.
    public var address: String? {
        var storage = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(self.descriptor, $0, &length) }
        }
        guard result == 0, Int32(storage.sun_family) == AF_UNIX else { return nil }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2
        let count = Int(length) - offset
        guard count > 0 else { return nil }
        let bytes = withUnsafeBytes(of: &storage.sun_path) { Array($0.prefix(min(count, $0.count))) }
        if bytes.first == 0 {
            return "@" + String(decoding: bytes.dropFirst(), as: UTF8.self)
        }
        return String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    /// `NAME (fd N)`.
    public var description: String { "\(self.name) (fd \(self.descriptor))" }

    /// Checks that the descriptor is a listening `AF_UNIX` `SOCK_STREAM` socket.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration`, naming what it is instead.
    func validate() throws {
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(self.descriptor, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        var status = stat()
        guard fstat(self.descriptor, &status) == 0 else {
            throw SocketIPCError(.invalidConfiguration, "inherited socket \(self) is not an open descriptor")
        }
        guard (status.st_mode & S_IFMT) == S_IFSOCK else {
            throw SocketIPCError(.invalidConfiguration, "inherited descriptor \(self) is not a socket")
        }
        #if os(Linux)
        guard option(SO_DOMAIN) == AF_UNIX else {
            throw SocketIPCError(.invalidConfiguration, "inherited socket \(self) is not a Unix domain socket (AF_UNIX)")
        }
        #endif
        guard option(SO_TYPE) == systemSocketStream else {
            throw SocketIPCError(.invalidConfiguration, "inherited socket \(self) is not a stream socket (SOCK_STREAM)")
        }
        guard option(SO_ACCEPTCONN) == 1 else {
            throw SocketIPCError(
                .invalidConfiguration,
                "inherited socket \(self) does not listen (a socket unit with Accept=yes passes connections, not a listener)"
            )
        }
    }
}
