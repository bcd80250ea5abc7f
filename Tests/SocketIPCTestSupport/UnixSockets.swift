import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Calls `body` with `path` as a `sockaddr_un`; `path` must fit in `sun_path`.
public func withSocketAddress<Result>(
    _ path: String,
    _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result
) -> Result {
    var address = sockaddr_un()
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
        #if canImport(Darwin)
        self.descriptor = socket(AF_UNIX, SOCK_STREAM, 0)
        let noSignal: Int32 = 0
        #else
        self.descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let noSignal = Int32(MSG_NOSIGNAL)
        #endif
        guard withSocketAddress(path, { bind(self.descriptor, $0, $1) }) == 0, listen(self.descriptor, 512) == 0 else {
            let code = errno
            close(self.descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        let descriptor = self.descriptor
        let thread = Thread {
            while true {
                let accepted = accept(descriptor, nil, nil)
                if accepted >= 0 {
                    if let greeting {
                        _ = greeting.utf8CString.withUnsafeBufferPointer {
                            send(accepted, $0.baseAddress, $0.count - 1, noSignal)
                        }
                    }
                    close(accepted)
                } else if errno != EINTR && errno != ECONNABORTED {
                    return
                }
            }
        }
        thread.start()
    }

    /// Stops accepting (wakes the blocked `accept`) and closes the listening socket. Safe to call twice.
    public func stop() {
        let wasStopped = self.stopped.withLock { stopped in
            defer { stopped = true }
            return stopped
        }
        guard !wasStopped else { return }
        shutdown(self.descriptor, Int32(SHUT_RDWR))
        close(self.descriptor)
    }
}
