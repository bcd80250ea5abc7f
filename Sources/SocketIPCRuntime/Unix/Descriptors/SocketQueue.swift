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
}
