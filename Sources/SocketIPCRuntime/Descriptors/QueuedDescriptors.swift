import CSocketIPCLinux

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Descriptors a peer passed before the server could refuse them: on a connection to an inherited (socket-activated)
/// listening socket, made before the server turned descriptor passing off there.
///
/// A service manager makes the listening socket and may start the server only once a first peer connects (systemd's
/// socket activation), so such a peer can pass descriptors (`SCM_RIGHTS`) before the server runs. Whoever then reads
/// the connection without taking them (SwiftNIO's `read(2)`), or closes it, makes the kernel drop them in its thread,
/// and the last close of a TCP socket with `SO_LINGER` whose queue cannot drain blocks that thread for as long as the
/// peer chose: an event loop, or the accepting thread (a review: both event loops held for 24 s by a peer the policy
/// refused). No honest peer passes descriptors before the server's hello, so the server refuses such a connection,
/// and its socket is closed on a closing thread charged to the peer's user, as any descriptor it passed is.
enum QueuedDescriptors {
    /// Why a connection is refused.
    enum Refusal: Equatable {
        /// Its peer passed descriptors.
        case passedDescriptors
        /// What it queued cannot be looked at whole: more than ``maximumLookedAt``, out-of-band data (a peek stops at
        /// its mark and skips the byte), bytes of another process than the first (a socket with `SO_PASSCRED` never
        /// joins them), or a peek that failed. No honest peer does any of these before the server's hello, and any of
        /// them could hide descriptors behind it.
        case unreadable
    }

    /// The most bytes looked at: 16 MiB. A peer cannot queue more without a send buffer raised past `wmem_max` (212,992
    /// bytes by default), which takes privileges.
    static let maximumLookedAt = 16 << 20

    /// Whether the connection `socket` (just accepted, its passing off now, so that no descriptor comes later) is
    /// refused for what its peer queued before; if it is, the socket is shut down and handed, with the copies of
    /// what it passed, to ``PassedDescriptorCloser`` charged to `user`: the caller must not touch it again.
    ///
    /// Costs one `ioctl(2)` when nothing is queued, and a `recvmsg(2)` that peeks at what is (`MSG_PEEK`: the bytes
    /// stay for the connection). It fails closed: a peek must see every queued byte (it stops early at the first
    /// message that carried descriptors, at an out-of-band mark, or where another process's bytes begin), else the
    /// connection is refused (a review found each of these hiding descriptors from a first form that trusted one
    /// peek). The copies a peek brings have their `SO_LINGER` turned off before anything is closed (the setting is
    /// the socket's, shared by the copy in flight). A peek copies no more than the user's bound of descriptors held
    /// allows (``PassedDescriptorCloser/peekRoom(for:)``): what it has no room for stays in the message, and a
    /// lingering socket among those holds only a closing thread charged to the user.
    static func refuse(_ socket: Int32, passedBy user: PassedDescriptorCloser.User) -> Refusal? {
        #if os(Linux)
        var queued: Int32 = 0
        guard ioctl(socket, UInt(FIONREAD), &queued) == 0 else { return Self.close(socket, [], .unreadable, user) }
        guard queued > 0 else { return nil }
        guard Int(queued) <= Self.maximumLookedAt else { return Self.close(socket, [], .unreadable, user) }
        // The copies a peek brings count against the user's bound of descriptors held, checked first: a paused user's
        // peek copies none, and its connection is refused all the same when it passed any.
        let room = PassedDescriptorCloser.peekRoom(for: user)
        var descriptors = [Int32](repeating: -1, count: Int(CSOCKETIPC_MAX_DESCRIPTORS))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(queued), alignment: 16)
        defer { buffer.deallocate() }
        let peeked = descriptors.withUnsafeMutableBufferPointer { received in
            csocketipc_peek_with_descriptors(
                socket, buffer.baseAddress, UInt(buffer.count), received.baseAddress, Int32(room), &count, &truncated)
        }
        let passed = Array(descriptors[0..<Int(max(count, 0))])
        if count > 0 || truncated == 2 { return Self.close(socket, passed, .passedDescriptors, user) }
        // Control data of another kind (truncated 1) is not refused: SCM_SECURITY, which a listener with
        // PassSecurity= gets for an honest peer too.
        guard peeked == Int(queued) else { return Self.close(socket, passed, .unreadable, user) }
        return nil
        #else
        return nil  // Darwin: untested, and no socket activation.
        #endif
    }

    /// Shuts `socket` down and hands it, after the peer's `descriptors`, to the closer charged to `user`.
    private static func close(
        _ socket: Int32, _ descriptors: [Int32], _ refusal: Refusal, _ user: PassedDescriptorCloser.User
    ) -> Refusal {
        for descriptor in descriptors { Self.turnLingerOff(descriptor) }
        _ = shutdown(socket, Int32(SHUT_RDWR))
        PassedDescriptorCloser.close(descriptors + [socket], passedBy: user)
        return refusal
    }

    /// Turns `SO_LINGER` off on `descriptor` if it is a socket with it on: its last close then never waits.
    private static func turnLingerOff(_ descriptor: Int32) {
        var current = linger()
        var length = socklen_t(MemoryLayout<linger>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_LINGER, &current, &length) == 0, current.l_onoff != 0 else { return }
        var off = linger(l_onoff: 0, l_linger: 0)
        _ = setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
    }
}
