import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PeerCredentials {
    /// Reads the peer's credentials of a connected Unix domain socket descriptor; `nil` where the platform cannot
    /// tell. With `includingGroups`, also the supplementary groups (Linux: `SO_PEERGROUPS`); with
    /// `includingProcessIdentity`, also the control group and the security label (``PeerProcessIdentity``).
    static func read(
        descriptor: Int32,
        includingGroups: Bool = false,
        includingProcessIdentity: Bool = false
    ) -> PeerCredentials? {
        #if os(Linux)
        var credentials = KernelPeerCredentials()
        var length = socklen_t(MemoryLayout<KernelPeerCredentials>.size)
        guard getsockopt(descriptor, SOL_SOCKET, 17 /* SO_PEERCRED */, &credentials, &length) == 0 else { return nil }
        let identity =
            includingProcessIdentity ? PeerProcessIdentity.of(descriptor: descriptor, processID: credentials.pid) : nil
        return PeerCredentials(
            processID: credentials.pid,
            userID: credentials.uid,
            groupID: credentials.gid,
            supplementaryGroupIDs: includingGroups ? Self.readGroups(descriptor: descriptor) : nil,
            controlGroup: identity?.controlGroup,
            securityLabel: identity?.securityLabel
        )
        #elseif canImport(Darwin)
        var userID = uid_t(0)
        var groupID = gid_t(0)
        guard getpeereid(descriptor, &userID, &groupID) == 0 else { return nil }
        var processID = pid_t(0)
        var length = socklen_t(MemoryLayout<pid_t>.size)
        if getsockopt(descriptor, darwinSocketOptionLevelLocal, darwinLocalPeerProcessID, &processID, &length) != 0 {
            processID = 0
        }
        return PeerCredentials(processID: processID, userID: userID, groupID: groupID)
        #else
        return nil
        #endif
    }

    #if os(Linux)
    /// The peer's supplementary groups, from `SO_PEERGROUPS` (Linux 4.13 and later); `nil` where the kernel does not
    /// tell them.
    private static func readGroups(descriptor: Int32) -> [UInt32]? {
        var groups = [UInt32](repeating: 0, count: 64)
        while true {
            var length = socklen_t(groups.count * MemoryLayout<UInt32>.size)
            let result = groups.withUnsafeMutableBytes {
                getsockopt(descriptor, SOL_SOCKET, 59 /* SO_PEERGROUPS */, $0.baseAddress, &length)
            }
            if result == 0 { return Array(groups.prefix(Int(length) / MemoryLayout<UInt32>.size)) }
            // ERANGE: the kernel has set `length` to the size it needs (NGROUPS_MAX is 65,536 groups at most).
            guard errno == ERANGE, Int(length) > groups.count * MemoryLayout<UInt32>.size else { return nil }
            groups = [UInt32](repeating: 0, count: Int(length) / MemoryLayout<UInt32>.size)
        }
    }
    #endif

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
        #elseif canImport(Darwin)
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        let credentials: EventLoopFuture<DarwinPeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(darwinSocketOptionLevelLocal),
            name: SocketOptionName(darwinLocalPeerCredentials)
        )
        let processID: EventLoopFuture<Int32> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(darwinSocketOptionLevelLocal),
            name: SocketOptionName(darwinLocalPeerProcessID)
        )
        return credentials.and(processID.recover { _ in 0 })
            .map { credentials, processID in
                Optional(PeerCredentials(processID: processID, userID: credentials.userID, groupID: credentials.groups.0))
            }
            .recover { _ in nil }
        #else
        return channel.eventLoop.makeSucceededFuture(nil)
        #endif
    }
}

#if canImport(Darwin)
/// `SOL_LOCAL` of `<sys/un.h>`: the level of the Unix domain socket options below.
private let darwinSocketOptionLevelLocal: Int32 = 0
/// `LOCAL_PEERCRED`: the peer's credentials as a `struct xucred`.
private let darwinLocalPeerCredentials: Int32 = 0x001
/// `LOCAL_PEERPID`: the peer's process id.
private let darwinLocalPeerProcessID: Int32 = 0x002

/// `struct xucred` of `<sys/ucred.h>`: what `LOCAL_PEERCRED` fills in (its first group is the effective group id).
private struct DarwinPeerCredentials: Sendable {
    var version: UInt32 = 0
    var userID: UInt32 = 0
    var groupCount: Int16 = 0
    var groups: (
        UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32,
        UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32
    ) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
}
#endif

#if os(Linux)
/// `struct ucred` of `<sys/socket.h>` (Glibc hides it behind `_GNU_SOURCE`): what `SO_PEERCRED` fills in.
private struct KernelPeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
#endif
