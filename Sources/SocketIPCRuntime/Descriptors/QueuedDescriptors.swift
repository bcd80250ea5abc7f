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
    /// The most bytes looked at: 16 MiB. A peer cannot queue more without a send buffer raised past `wmem_max` (212,992
    /// bytes by default), which takes privileges; a connection with more queued is refused as one with descriptors.
    static let maximumLookedAt = 16 << 20

    /// Whether the peer queued descriptors on `socket` (a connection just accepted, whose passing is off now, so that
    /// none come later); if it did, or queued more than ``maximumLookedAt``, the socket is shut down and handed, with
    /// the descriptors, to ``PassedDescriptorCloser`` charged to `user`: the caller must not touch it again.
    ///
    /// Costs one `ioctl(2)` when nothing is queued, and a `recvmsg(2)` that peeks at what is (`MSG_PEEK`: the bytes
    /// stay for the connection). A peek stops at the first message that carried descriptors, and brings copies of
    /// them, so it finds descriptors anywhere in what is queued; their `SO_LINGER` is turned off before anything is
    /// closed (the setting is the socket's, shared by the copy in flight).
    static func refuse(_ socket: Int32, passedBy user: PassedDescriptorCloser.User) -> Bool {
        #if os(Linux)
        var queued: Int32 = 0
        guard ioctl(socket, UInt(FIONREAD), &queued) == 0, queued > 0 else { return false }
        var descriptors = [Int32](repeating: -1, count: Int(CSOCKETIPC_MAX_DESCRIPTORS))
        var count: Int32 = 0
        var truncated: Int32 = 0
        if Int(queued) <= Self.maximumLookedAt {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(queued), alignment: 16)
            defer { buffer.deallocate() }
            let peeked = descriptors.withUnsafeMutableBufferPointer { received in
                csocketipc_receive_with_descriptors(
                    socket, buffer.baseAddress, UInt(buffer.count), received.baseAddress, CSOCKETIPC_MAX_DESCRIPTORS,
                    &count, &truncated, Int32(MSG_PEEK | MSG_DONTWAIT))
            }
            guard peeked > 0, count > 0 || truncated != 0 else { return false }
        }
        let passed = Array(descriptors[0..<Int(count)])
        for descriptor in passed { Self.turnLingerOff(descriptor) }
        _ = shutdown(socket, Int32(SHUT_RDWR))
        PassedDescriptorCloser.close(passed + [socket], passedBy: user)
        return true
        #else
        return false  // Darwin: untested, and no socket activation.
        #endif
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
