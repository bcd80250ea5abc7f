import Foundation
import SocketIPCTestSupport
import Synchronization

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Binds a Unix stream socket at `path` and returns its descriptor, without listening.
/// - Throws: `POSIXError` when the socket cannot be made or bound.
func bindUnixSocket(at path: String) throws -> Int32 {
    let descriptor = makeUnixStreamSocket()
    guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    guard withSocketAddress(path, { bind(descriptor, $0, $1) }) == 0 else {
        let code = errno
        close(descriptor)
        throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
    }
    return descriptor
}

/// Leaves a stale socket file at `path`: binds a socket there and closes it without unlinking the file, as a server
/// that crashed does. Nobody listens on it (`connect` gives `ECONNREFUSED`).
func leaveStaleSocket(at path: String) throws {
    close(try bindUnixSocket(at: path))
}

/// Starts `socket-ipc serve` on `path` and kills it with SIGKILL: its socket file stays, stale, and its lock file is
/// free, as after a crash.
func leaveStaleSocketOfKilledServe(at path: String) async throws {
    try await withServeCommand(at: path) { server in
        server.signal(SIGKILL)
        _ = await server.waitForExit()
    }
}

/// Holds an exclusive `flock` on the file at `path` (created if missing) until ``release()``, as a server holds its
/// lock file.
final class HeldLock: Sendable {
    private let descriptor: Int32

    /// Opens (creating) `path` and locks it.
    init(path: String) throws {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0, flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            if descriptor >= 0 { close(descriptor) }
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        self.descriptor = descriptor
    }

    /// Drops the lock and closes the file.
    func release() {
        close(self.descriptor)
    }
}

/// A listener whose accept queue is full: it listens with a backlog of 0, never accepts, and has been sent
/// non-blocking connects until one failed with `EAGAIN`.
final class FullQueueListener: Sendable {
    private let listener: Int32
    private let clients: [Int32]

    /// Listens at `path` and fills the queue.
    init(path: String) throws {
        let listener = try bindUnixSocket(at: path)
        guard listen(listener, 0) == 0 else {
            let code = errno
            closeDescriptor(listener)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        var clients: [Int32] = []
        var full = false
        for _ in 0..<64 {
            let client = makeUnixStreamSocket()
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            if connectUnixSocket(client, to: path) == 0 {
                clients.append(client)
                continue
            }
            let code = errno
            closeDescriptor(client)
            full = code == EAGAIN || code == EWOULDBLOCK
            break
        }
        self.listener = listener
        self.clients = clients
        guard full else {
            self.stop()
            throw POSIXError(.EIO)
        }
    }

    /// Closes the queued clients and the listener.
    func stop() {
        for client in self.clients { closeDescriptor(client) }
        closeDescriptor(self.listener)
    }
}

/// Another program's listener: on a thread of its own it accepts each connection, writes `greeting` at once, then
/// reads until the client closes. Not SocketIPC unless its greeting is a hello (a broken or hostile server's).
final class GreetingListener: Sendable {
    private let descriptor: Int32
    private let stopped = Mutex(false)

    /// Listens at `path` and starts accepting.
    convenience init(path: String, greeting: String) throws {
        try self.init(path: path, greeting: Array(greeting.utf8))
    }

    /// Listens at `path` and starts accepting; with `reads` false, it reads nothing after its greeting and keeps the
    /// connection open until ``stop()``.
    init(path: String, greeting: [UInt8], reads: Bool = true) throws {
        let descriptor = try bindUnixSocket(at: path)
        guard listen(descriptor, 16) == 0 else {
            let code = errno
            closeDescriptor(descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        self.descriptor = descriptor
        // Only this thread closes the listening socket (see `ClosingListener`): a close in `stop()` could race with
        // the next `accept` here after another test reused the number.
        let held = Mutex<[Int32]>([])
        Thread {
            defer {
                closeDescriptor(descriptor)
                for accepted in held.withLock({ $0 }) { closeDescriptor(accepted) }
            }
            while true {
                let accepted = accept(descriptor, nil, nil)
                if accepted < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    return
                }
                sendWithoutSignal(accepted, greeting)
                if !reads {
                    // Held until the listener stops: the next accept fails then.
                    held.withLock { $0.append(accepted) }
                    continue
                }
                var buffer = [UInt8](repeating: 0, count: 256)
                while buffer.withUnsafeMutableBytes({ read(accepted, $0.baseAddress, $0.count) }) > 0 {}
                closeDescriptor(accepted)
            }
        }.start()
    }

    /// Stops accepting: shuts the listener down (connecting is refused at once); the accepting thread then closes
    /// it. Safe to call twice.
    func stop() {
        let wasStopped = self.stopped.withLock { stopped in
            defer { stopped = true }
            return stopped
        }
        guard !wasStopped else { return }
        shutdown(self.descriptor, Int32(SHUT_RDWR))
    }
}
