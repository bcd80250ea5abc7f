import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one way SocketIPC writes to a socket with its own system calls: `send(2)` with `MSG_NOSIGNAL`, so that a
/// peer that has gone away makes the call fail with `EPIPE` instead of killing the process with `SIGPIPE`.
///
/// SwiftNIO ignores `SIGPIPE` for the whole process only once it has made its first socket, and code that writes on
/// a thread of its own (the EOF-style server's accepting thread, the EOF client's fast path) may run before that:
/// every plain `write(2)` to a socket is a way for any local peer to end the process. On Darwin, which has no
/// `MSG_NOSIGNAL`, the socket must carry `SO_NOSIGPIPE` instead (see ``SocketSend/preventSignal(on:)``).
enum SocketSend {
    /// How far ``sendAll(_:from:)`` got.
    enum Outcome: Equatable {
        /// Every byte was handed to the kernel.
        case done
        /// The socket's send buffer is full (`EAGAIN`): the rest is still in the buffer.
        case wouldBlock
        /// The send failed with this `errno` (`EPIPE` or `ECONNRESET` when the peer has closed).
        case failed(errno: Int32)
    }

    /// One `send` of up to `count` bytes, retried on `EINTR`; never raises `SIGPIPE`.
    /// - Returns: The bytes sent, or -1 with `errno` set.
    @inline(__always)
    static func send(_ descriptor: Int32, _ bytes: UnsafeRawPointer?, _ count: Int) -> Int {
        while true {
            #if canImport(Darwin)
            let sent = Darwin.send(descriptor, bytes, count, 0)  // the socket has SO_NOSIGPIPE (untested here)
            #else
            let sent = systemSend(descriptor, bytes, count, systemNoSignal)
            #endif
            if sent < 0 && errno == EINTR { continue }
            return sent
        }
    }

    /// Sends the readable bytes of `buffer` until they are all sent, the socket would block, or it fails; moves the
    /// reader index past what was sent.
    static func sendAll(_ descriptor: Int32, from buffer: inout ByteBuffer) -> Outcome {
        while buffer.readableBytes > 0 {
            let sent = buffer.withUnsafeReadableBytes { Self.send(descriptor, $0.baseAddress, $0.count) }
            if sent > 0 {
                buffer.moveReaderIndex(forwardBy: sent)
                continue
            }
            let code = errno
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) { return .wouldBlock }
            return .failed(errno: sent == 0 ? EPIPE : code)
        }
        return .done
    }

    /// Makes writes to `descriptor` never raise `SIGPIPE` where the platform needs a socket option for that
    /// (Darwin: `SO_NOSIGPIPE`); does nothing on Linux, where ``send(_:_:_:)`` passes `MSG_NOSIGNAL`.
    @inline(__always)
    static func preventSignal(on descriptor: Int32) {
        #if canImport(Darwin)
        // Untested: SocketIPC's tests run on Linux.
        var on: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }
}
