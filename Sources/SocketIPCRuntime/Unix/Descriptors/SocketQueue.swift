#if os(Linux)
import CSocketIPCLinux
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What the kernel holds queued on a connected socket.
enum SocketQueue {
    /// Bytes written to `descriptor` that the peer has not read yet (`TIOCOUTQ`, Linux), 0 where that cannot be told
    /// (Darwin: untested) or the call fails. `descriptor` must still be the socket's: call it while the socket is open.
    static func unreadByPeer(_ descriptor: Int32) -> Int {
        #if os(Linux)
        var count: Int32 = 0
        return ioctl(descriptor, UInt(TIOCOUTQ), &count) == 0 ? Int(count) : 0
        #else
        return 0
        #endif
    }

    /// Bytes the peer of `descriptor`, a connected Unix-domain stream socket, has in its receive queue and has not
    /// read, to the byte (a buffer it read part of counts what is left: ``csocketipc_unix_peer_unread``, sock_diag);
    /// `nil` where that cannot be told. Unlike ``unreadByPeer(_:)``, which counts whole buffers until the peer has read
    /// each to its end, it falls as the peer reads: a peer reading a large message slowly shows it (found by a
    /// review: one reading 1 KiB a second was cut off as frozen, its count unchanged for 32 s). A netlink round trip:
    /// for keepalive's timeouts, not for every write.
    static func unreadInPeer(_ descriptor: Int32) -> Int? {
        #if os(Linux)
        let unread = csocketipc_unix_peer_unread(descriptor)
        return unread >= 0 ? unread : nil
        #else
        return nil
        #endif
    }
}
