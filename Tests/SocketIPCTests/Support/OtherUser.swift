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

/// Another user for tests that need one: `nobody` (65534), reached with `setpriv` from a test run as root. `setpriv`
/// is util-linux's, so the tests that run processes as another user run on Linux only (elsewhere they are skipped).
enum OtherUser {
    static let uid: uid_t = 65534
    static let gid: gid_t = 65534

    /// `setpriv`'s path, if it is installed.
    static let setpriv = executable("setpriv")
    /// `socat`'s path, if it is installed.
    static let socat = executable("socat")

    /// Whether tests can run a process as ``uid``: the tests run as root and `setpriv` is installed.
    static var canRunProcesses: Bool { geteuid() == 0 && setpriv != nil }

    /// Whether tests can make files owned by ``uid`` (`chown` needs root).
    static var canOwnFiles: Bool { geteuid() == 0 }

    /// The arguments that run `command` as ``uid`` with no supplementary groups.
    static func command(_ command: [String]) -> [String] {
        ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups"] + command
    }

    private static func executable(_ name: String) -> String? {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for directory in directories + ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
            let candidate = directory + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// A process that is not SocketIPC listening on a socket: `socat UNIX-LISTEN:PATH,mode=0600,fork EXEC:/bin/cat` run
/// as ``OtherUser``.
final class ForeignListener: Sendable {
    private let process: Process
    private let exited: Task<Void, Never>

    private init(process: Process, exited: Task<Void, Never>) {
        self.process = process
        self.exited = exited
    }

    /// Starts the listener and returns once it listens (socat reports it on standard error).
    static func start(at path: String) async throws -> ForeignListener {
        guard let setpriv = OtherUser.setpriv, let socat = OtherUser.socat else { throw POSIXError(.ENOENT) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: setpriv)
        process.arguments = OtherUser.command([socat, "-d", "-d", "UNIX-LISTEN:\(path),mode=0600,fork", "EXEC:/bin/cat"])
        let errorPipe = Pipe()
        process.standardError = errorPipe
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let (exits, exit) = AsyncStream.makeStream(of: Void.self)
        process.terminationHandler = { _ in exit.finish() }
        try launchSerialized(process)
        let exited = Task { for await _ in exits {} }
        let listener = ForeignListener(process: process, exited: exited)
        let (lines, line) = AsyncStream.makeStream(of: String.self)
        let reader = Thread {
            let handle = errorPipe.fileHandleForReading
            var pending = ""
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending += String(decoding: data, as: UTF8.self)
                while let newline = pending.firstIndex(of: "\n") {
                    line.yield(String(pending[..<newline]))
                    pending.removeSubrange(...newline)
                }
            }
            line.finish()
        }
        reader.start()
        for await text in lines where text.contains("listening on") { return listener }
        await listener.stop()
        throw POSIXError(.ECONNREFUSED)
    }

    /// Stops the listener and waits until it has exited. SIGKILL, because a child inherits ignored signals and the
    /// test process may ignore SIGTERM (service-lifecycle's signal handling does); its socket file stays behind.
    func stop() async {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        await self.exited.value
    }
}

/// Runs `body` with a foreign listener on `path`, and stops it afterwards, also when `body` throws.
func withForeignListener<Result>(at path: String, _ body: () async throws -> Result) async throws -> Result {
    let listener = try await ForeignListener.start(at: path)
    do {
        let result = try await body()
        await listener.stop()
        return result
    } catch {
        await listener.stop()
        throw error
    }
}

/// A socket of this process that listens with a `listen(0)` backlog and whose connection queue has been filled with
/// non-blocking connects, so that one more connect would wait (blocking) or fail with `EAGAIN` (non-blocking).
final class FullQueueListener {
    let listener: Int32
    private var clients: [Int32] = []

    init(at path: String) throws {
        self.listener = makeUnixStreamSocket()
        // On a throw from here on, deinit closes what is open.
        guard withSocketAddress(path, { bind(self.listener, $0, $1) }) == 0, listen(self.listener, 0) == 0 else {
            throw POSIXError(.EADDRINUSE)
        }
        while self.clients.count < 64 {
            let client = makeUnixStreamSocket()
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            let result = connectUnixSocket(client, to: path)
            if result != 0 {
                let code = errno
                close(client)
                guard code == EAGAIN else { throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO) }
                return
            }
            self.clients.append(client)
        }
        throw POSIXError(.EOVERFLOW)
    }

    deinit {
        for client in self.clients { close(client) }
        close(self.listener)
    }
}
