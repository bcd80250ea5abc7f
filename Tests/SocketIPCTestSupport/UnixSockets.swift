import Foundation
import Synchronization

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether the tests run on Linux: some need what only Linux has (`/proc`, `POLLRDHUP`, util-linux's `setpriv` and
/// `prlimit`, `SO_PEERGROUPS`); their traits say `.enabled(if: runsOnLinux)`.
public let runsOnLinux: Bool = {
    #if os(Linux)
    true
    #else
    false
    #endif
}()

/// `connect(2)` of `descriptor` to the socket at `path`: 0, or -1 with `errno` set. Usable where a type's own
/// `connect` hides the C function, without naming the C library's module (`Glibc.connect` builds on Linux only).
public func connectUnixSocket(_ descriptor: Int32, to path: String) -> Int32 {
    withSocketAddress(path) { connect(descriptor, $0, $1) }
}

/// `close(2)` of `descriptor`, for where a type's own `close` hides the C function.
@discardableResult
public func closeDescriptor(_ descriptor: Int32) -> Int32 {
    close(descriptor)
}

/// A new `AF_UNIX` `SOCK_STREAM` socket, close-on-exec, or -1 with `errno` set. On Darwin it has `SO_NOSIGPIPE` (see
/// ``disableSIGPIPE(on:)``), which ``sendWithoutSignal(_:_:flags:)`` relies on there.
///
/// Close-on-exec, so that a child another test spawns meanwhile does not inherit it: a test's close of its socket
/// then reaches the peer at once, not when that child exits (a test that closed its peer to free the server's side
/// waited 20 s for a CLI test's child).
public func makeUnixStreamSocket() -> Int32 {
    #if canImport(Glibc)
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    #elseif canImport(Musl)
    let descriptor = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
    #else
    let descriptor = socket(AF_UNIX, SOCK_STREAM, 0)
    if descriptor >= 0 { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }  // untested
    #endif
    if descriptor >= 0 { disableSIGPIPE(on: descriptor) }
    return descriptor
}

/// Makes writes to `descriptor` fail with `EPIPE` instead of raising `SIGPIPE` when the peer has gone, on Darwin,
/// with `SO_NOSIGPIPE` (untested); on Linux, which has no such option, it does nothing: there
/// ``sendWithoutSignal(_:_:flags:)`` passes `MSG_NOSIGNAL` instead. Call it on accepted sockets, which
/// ``makeUnixStreamSocket()`` does not make.
public func disableSIGPIPE(on descriptor: Int32) {
    #if canImport(Darwin)
    var on: Int32 = 1
    _ = setsockopt(descriptor, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<Int32>.size))
    #endif
}

/// `send(2)` that never raises `SIGPIPE`: with `MSG_NOSIGNAL` on Linux; on Darwin, which has no such flag, the socket
/// must have `SO_NOSIGPIPE` (``makeUnixStreamSocket()``, ``disableSIGPIPE(on:)``).
/// - Returns: What `send` returns: the number of bytes sent, or -1 with `errno` set.
@discardableResult
public func sendWithoutSignal(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, flags: Int32 = 0) -> Int {
    #if canImport(Darwin)
    send(descriptor, bytes.baseAddress, bytes.count, flags)
    #else
    send(descriptor, bytes.baseAddress, bytes.count, flags | Int32(MSG_NOSIGNAL))
    #endif
}

/// ``sendWithoutSignal(_:_:flags:)`` of `bytes`.
@discardableResult
public func sendWithoutSignal(_ descriptor: Int32, _ bytes: [UInt8], flags: Int32 = 0) -> Int {
    bytes.withUnsafeBytes { sendWithoutSignal(descriptor, $0, flags: flags) }
}

/// Calls `body` with `path` as a `sockaddr_un`; `path` must fit in `sun_path`.
public func withSocketAddress<Result>(
    _ path: String,
    _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result
) -> Result {
    var address = sockaddr_un()
    #if canImport(Darwin)
    address.sun_len = UInt8(MemoryLayout<sockaddr_un>.size)
    #endif
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: path.utf8)
        raw[path.utf8.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// A listener on a thread of its own that greets each connection with `greeting` (if any) and closes it at once,
/// without reading: SocketIPC's own server at its connection limit or shutting down, or an HTTP responder.
public final class ClosingListener: Sendable {
    /// The listening socket.
    public let descriptor: Int32
    private let stopped = Mutex(false)

    /// Binds `path`, listens, and starts accepting.
    /// - Throws: `POSIXError` when the socket cannot be bound or listen.
    public init(path: String, greeting: String? = nil) throws {
        self.descriptor = makeUnixStreamSocket()
        guard withSocketAddress(path, { bind(self.descriptor, $0, $1) }) == 0, listen(self.descriptor, 512) == 0 else {
            let code = errno
            close(self.descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        let descriptor = self.descriptor
        // Only this thread closes the listening socket, when `accept` fails after `stop()` shut it down: were `stop()`
        // to close it, a concurrent test could get the same number for a socket of its own before this thread's
        // next `accept`, which would then take (and close) that test's connections.
        let thread = Thread {
            defer { close(descriptor) }
            while true {
                let accepted = accept(descriptor, nil, nil)
                if accepted >= 0 {
                    if let greeting {
                        disableSIGPIPE(on: accepted)
                        sendWithoutSignal(accepted, Array(greeting.utf8))
                    }
                    close(accepted)
                } else if errno != EINTR && errno != ECONNABORTED {
                    return
                }
            }
        }
        thread.start()
    }

    /// Stops accepting: shuts the listening socket down, so that connecting is refused at once and the blocked
    /// `accept` fails (`EINVAL`); the accepting thread then closes the socket. Safe to call twice.
    public func stop() {
        let wasStopped = self.stopped.withLock { stopped in
            defer { stopped = true }
            return stopped
        }
        guard !wasStopped else { return }
        shutdown(self.descriptor, Int32(SHUT_RDWR))
    }
}
