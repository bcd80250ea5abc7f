import CSocketIPCLinux
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `strerror(code)` as a Swift string.
func errnoDescription(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text)
}

/// Retries `body` while it fails with `EINTR`; returns its result, or throws a ``SocketIPCError`` naming `name`.
@discardableResult
func retryingOnInterrupt(_ name: String, path: String? = nil, _ body: () -> Int32) throws -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SocketIPCError.systemCall(name, errno: code, path: path)
    }
}

#if canImport(Darwin)
let systemSocketStream = Int32(SOCK_STREAM)
let systemSocketCloseOnExec: Int32 = 0  // Darwin has no SOCK_CLOEXEC (untested)
let systemSocketNonBlocking: Int32 = 0  // nor SOCK_NONBLOCK: fcntl(2) after socket(2) instead (untested)
#else
let systemSocketStream = Int32(SOCK_STREAM.rawValue)
let systemSocketCloseOnExec = Int32(SOCK_CLOEXEC.rawValue)
let systemSocketNonBlocking = Int32(SOCK_NONBLOCK.rawValue)
#endif

#if canImport(Glibc)
let systemConnect = Glibc.connect
let systemPoll = Glibc.poll
let systemRead = Glibc.read
let systemSend = Glibc.send
let systemNoSignal = Int32(MSG_NOSIGNAL)
#elseif canImport(Musl)
let systemConnect = Musl.connect
let systemPoll = Musl.poll
let systemRead = Musl.read
let systemSend = Musl.send
let systemNoSignal = Int32(MSG_NOSIGNAL)
#elseif canImport(Darwin)
let systemConnect = Darwin.connect
let systemPoll = Darwin.poll
let systemRead = Darwin.read
#endif

/// `pipe2(O_CLOEXEC)` on Linux, so that no child spawned meanwhile inherits the pipe; `pipe` and `FD_CLOEXEC` on
/// Darwin, which has no `pipe2` (untested). Returns 0, or -1 with `errno`.
func makeCloseOnExecPipe(_ ends: inout [Int32]) -> Int32 {
    #if canImport(Darwin)
    guard pipe(&ends) == 0 else { return -1 }
    for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
    return 0
    #else
    return ends.withUnsafeMutableBufferPointer { csocketipc_pipe_cloexec($0.baseAddress!) }
    #endif
}

/// Sets `SO_PASSRIGHTS` on `socket` where the kernel has it (Linux 6.16 and later). Off, a peer's `SCM_RIGHTS` fails at
/// its `sendmsg(2)` with `EPERM`, so no descriptor it passes reaches this process. Without it, the kernel drops a
/// passed descriptor in the thread that reads (or closes) the socket, and dropping the last reference to a socket the
/// peer set `SO_LINGER` on blocks that thread for as long as the peer chose: an event loop, and every connection on
/// it. A connection takes its listening socket's setting when the peer connects, so a server turns it off on its
/// listening socket before it listens, and a client on its socket before it connects; only a ``DescriptorRelay``
/// turns it on, once its threads read the socket (a peer that takes descriptors passes them only after the other
/// side's hello, so after that). Best effort: returns whether the kernel took it (before Linux 6.16, and on Darwin,
/// it does not; untested on Darwin).
@discardableResult
func setDescriptorPassing(_ allowed: Bool, on socket: Int32) -> Bool {
    #if os(Linux)
    return csocketipc_set_pass_rights(socket, allowed ? 1 : 0) == 0
    #else
    return false
    #endif
}
