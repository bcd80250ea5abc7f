#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Asks a socket file whether anyone listens on it, with one non-blocking `connect` that never waits.
///
/// Only `ECONNREFUSED` proves the socket stale (nobody listens on it). Every other answer means someone may be
/// there: the connection was accepted or queued, the queue is full (`EAGAIN`), permission was denied (`EACCES`:
/// another user's socket, alive or not), or anything else; then the file must be left alone.
enum LivenessProbe {
    /// What the probe learned.
    enum Answer: Equatable {
        /// `ECONNREFUSED`: nobody listens; the file is a stale socket.
        case stale
        /// `ENOENT`: the file went away while being probed.
        case gone
        /// Someone may be listening; the words say why, for an error message.
        case maybeLive(String)
    }

    /// Probes the socket at `path` without blocking.
    /// - Throws: ``SocketIPCError`` (`systemCall`) when no probing socket can be made.
    static func probe(_ path: SocketPath) throws -> Answer {
        let descriptor = try retryingOnInterrupt("socket", path: path.path) { socket(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0) }
        defer { close(descriptor) }
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        let flags = fcntl(descriptor, F_GETFL)
        guard flags >= 0, fcntl(descriptor, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw SocketIPCError.systemCall("fcntl(O_NONBLOCK)", errno: errno, path: path.path)
        }
        // Whoever listens there may be hostile: what it could pass is refused, so that the close above drops nothing
        // (a lingering socket's close would hold this thread, the server's start, for as long as that peer chose).
        setDescriptorPassing(false, on: descriptor)
        var result = path.withSockAddr { systemConnect(descriptor, $0, $1) }
        var code = result == 0 ? 0 : errno
        // A connect interrupted by a signal goes on in the background; asking again reports how it ended (EALREADY
        // while it is still going on, which means a listener is there).
        while result != 0 && code == EINTR {
            result = path.withSockAddr { systemConnect(descriptor, $0, $1) }
            code = result == 0 ? 0 : errno
        }
        let answer = Self.answer(forConnectError: code)
        // A connection made names the process that made the listening socket (SO_PEERCRED: the credentials at
        // listen(2)), so that the message can say which process to look at. That process may have handed the socket
        // on (a fork, socket activation) or exited since, so the words say "made by" (found by a review).
        if code == 0 || code == EISCONN, let listener = PeerCredentials.read(descriptor: descriptor),
            listener.processID > 0
        {
            let exited = kill(listener.processID, 0) != 0 && errno == ESRCH
            return .maybeLive(
                "a process is listening on it (a probing connection was accepted; the listening socket was made by "
                    + "process \(listener.processID), uid \(listener.userID)\(exited ? ", which has exited since" : ""))"
            )
        }
        return answer
    }

    /// What a `connect` that ended with `code` (0 for success) says about the socket.
    static func answer(forConnectError code: Int32) -> Answer {
        switch code {
        case 0, EISCONN:
            return .maybeLive("a process is listening on it (a probing connection was accepted)")
        case ECONNREFUSED:
            return .stale
        case ENOENT:
            return .gone
        case EAGAIN, EWOULDBLOCK:
            return .maybeLive("a process is listening on it and its connection queue is full")
        case EINPROGRESS, EALREADY:
            return .maybeLive("a process is listening on it (a probing connection is in progress)")
        case EACCES, EPERM:
            return .maybeLive(
                "this process may not connect to it (\(errnoDescription(code))), so it may belong to another "
                    + "user's live server"
            )
        case EPROTOTYPE:
            return .maybeLive("it is a socket of another type (not a stream socket) that may be in use")
        default:
            return .maybeLive("probing it failed with \(errnoDescription(code)) (errno \(code)), so it may be live")
        }
    }
}
