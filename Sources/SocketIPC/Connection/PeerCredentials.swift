import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Who is on the other end of a connection, as the kernel reports it (`SO_PEERCRED` on Linux): the process id,
/// user id and group id of the peer when it connected (or, for the client, when the server called `listen`).
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    /// The peer's process id.
    public let processID: Int32
    /// The peer's effective user id.
    public let userID: UInt32
    /// The peer's effective group id.
    public let groupID: UInt32

    /// Creates credentials, for tests and authorization policies.
    public init(processID: Int32, userID: UInt32, groupID: UInt32) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
    }

    /// `pid=… uid=… gid=…`.
    public var description: String { "pid=\(self.processID) uid=\(self.userID) gid=\(self.groupID)" }

    /// Reads the peer's credentials of a connected Unix domain socket descriptor; `nil` where the platform cannot
    /// tell.
    static func read(descriptor: Int32) -> PeerCredentials? {
        #if os(Linux)
        var credentials = KernelPeerCredentials()
        var length = socklen_t(MemoryLayout<KernelPeerCredentials>.size)
        guard getsockopt(descriptor, SOL_SOCKET, 17 /* SO_PEERCRED */, &credentials, &length) == 0 else { return nil }
        return PeerCredentials(processID: credentials.pid, userID: credentials.uid, groupID: credentials.gid)
        #else
        return nil
        #endif
    }

    /// Reads the peer's credentials of a connected Unix domain socket channel; `nil` where the platform or the
    /// channel cannot tell. Completes at once when called on the channel's event loop.
    static func read(from channel: any Channel) -> EventLoopFuture<PeerCredentials?> {
        #if os(Linux)
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        let future: EventLoopFuture<KernelPeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET),
            name: SocketOptionName(17)  // SO_PEERCRED
        )
        return future.map { Optional(PeerCredentials(processID: $0.pid, userID: $0.uid, groupID: $0.gid)) }
            .recover { _ in nil }
        #else
        return channel.eventLoop.makeSucceededFuture(nil)
        #endif
    }
}

#if os(Linux)
/// `struct ucred` of `<sys/socket.h>` (Glibc hides it behind `_GNU_SOURCE`): what `SO_PEERCRED` fills in.
private struct KernelPeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
#endif
