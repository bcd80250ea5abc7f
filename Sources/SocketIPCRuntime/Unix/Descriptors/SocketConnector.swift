#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Connects a Unix domain socket to a path with the platform's full `sun_path` (SwiftNIO's own address type stops at
/// 103 bytes everywhere), ready to hand to `ClientBootstrap.withConnectedSocket`.
enum SocketConnector {
    /// Opens a socket and connects it to `path`, retrying while the server's backlog is full, up to `timeout`.
    /// - Returns: The connected, non-blocking descriptor; the caller owns it.
    /// - Throws: ``SocketIPCError`` with code `connectionRefused`, `unauthorized`, `timedOut` or `systemCall`.
    static func connect(to path: SocketPath, timeout: Duration) async throws -> Int32 {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var backoff = Duration.microseconds(100)
        while true {
            let descriptor = try retryingOnInterrupt("socket") { socket(AF_UNIX, systemSocketStream, 0) }
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            SocketSend.preventSignal(on: descriptor)
            var result: Int32
            repeat {
                result = path.withSockAddr { systemConnect(descriptor, $0, $1) }
            } while result != 0 && errno == EINTR
            if result == 0 { return descriptor }
            let code = errno
            close(descriptor)
            switch code {
            case EAGAIN:
                // The listen backlog is full: a Unix domain socket connect cannot complete asynchronously, so retry.
                guard ContinuousClock.now < deadline else {
                    throw SocketIPCError(.timedOut, "the server at \(path) did not accept within \(timeout) (its backlog is full)", path: path.path)
                }
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .milliseconds(10))
            case ENOENT:
                throw SocketIPCError(.connectionRefused, "no server at \(path): the socket file does not exist", path: path.path)
            case ECONNREFUSED:
                throw SocketIPCError(.connectionRefused, "no server is listening on \(path)", path: path.path)
            case EACCES, EPERM:
                throw SocketIPCError(.unauthorized, "no permission to connect to \(path) (check the socket file's mode)", path: path.path)
            default:
                throw SocketIPCError.systemCall("connect", errno: code, path: path.path)
            }
        }
    }
}
