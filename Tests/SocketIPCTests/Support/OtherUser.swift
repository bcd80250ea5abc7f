import Foundation
import SocketIPCTestSupport

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
/// as ``OtherUser``, started with `posix_spawn` (``SpawnedProcess``, SocketIPCTestSupport).
final class ForeignListener: Sendable {
    private let process: SpawnedProcess

    private init(process: SpawnedProcess) {
        self.process = process
    }

    /// Starts the listener and returns once it listens (socat reports it on standard error).
    static func start(at path: String) async throws -> ForeignListener {
        guard let setpriv = OtherUser.setpriv, let socat = OtherUser.socat else { throw POSIXError(.ENOENT) }
        // No time limit: the listener lives as long as the test that uses it, which stops it.
        let process = try SpawnedProcess(
            executable: setpriv,
            arguments: OtherUser.command([socat, "-d", "-d", "UNIX-LISTEN:\(path),mode=0600,fork", "EXEC:/bin/cat"]),
            timeLimit: nil
        )
        let listener = ForeignListener(process: process)
        if await process.standardError.waitForLine(containing: "listening on") != nil { return listener }
        await listener.stop()
        throw POSIXError(.ECONNREFUSED)
    }

    /// Stops the listener and waits until it has exited. SIGKILL, although the child starts with every signal at its
    /// default action (SIGTERM would do now); its socket file stays behind.
    func stop() async {
        await self.process.stop()
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
