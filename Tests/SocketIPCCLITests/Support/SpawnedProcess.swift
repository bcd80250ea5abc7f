import Foundation
import SocketIPCTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A process started with `posix_spawn(3)` itself, every signal unblocked and at its default action, and reaped with
/// `waitpid(2)` on a thread of its own: for a program that closes every descriptor it does not pass on, such as
/// `systemd-socket-activate`. (swift-corelibs-foundation's `Process` learns that a child exited from a descriptor the
/// child inherits; when the child closes it early, `Process` waits for that child alone and misses every other
/// child's exit until it ends. `Process` also lets the child inherit the launching thread's blocked signals.)
final class SpawnedProcess: Sendable {
    /// The process id.
    let processID: pid_t
    /// What the process writes to standard output.
    let standardOutput: OutputReader
    /// What the process writes to standard error.
    let standardError: OutputReader
    private let exit: Task<Int32, Never>

    /// Starts `executable` with `arguments`; standard input is `/dev/null`.
    /// - Throws: `POSIXError` when the pipes cannot be made or the process cannot be started.
    init(_ executable: String, _ arguments: [String]) throws {
        (self.processID, self.standardOutput, self.standardError) = try withLaunchLock {
            try Self.spawn(executable, arguments)
        }
        let child = self.processID
        let (exits, exited) = AsyncStream.makeStream(of: Int32.self)
        let reaper = Thread {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
            // The exit status, or 128 + the signal that ended it, as a shell reports it.
            let low = status & 0x7F
            exited.yield(low == 0 ? (status >> 8) & 0xFF : 128 + low)
            exited.finish()
        }
        reaper.start()
        self.exit = Task {
            var iterator = exits.makeAsyncIterator()
            return await iterator.next() ?? -1
        }
    }

    /// Starts the process; returns its pid and readers of its standard output and error.
    private static func spawn(
        _ executable: String,
        _ arguments: [String]
    ) throws -> (pid_t, OutputReader, OutputReader) {
        var output: [Int32] = [-1, -1]
        var error: [Int32] = [-1, -1]
        guard pipe(&output) == 0, pipe(&error) == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        // The child gets them as its standard output and error only (dup2 clears close-on-exec on the copies).
        for descriptor in output + error { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, error[1], 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        close(output[1])
        close(error[1])
        guard result == 0 else {
            close(output[0])
            close(error[0])
            throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EIO)
        }
        return (
            pid,
            OutputReader(FileHandle(fileDescriptor: output[0], closeOnDealloc: true)),
            OutputReader(FileHandle(fileDescriptor: error[0], closeOnDealloc: true))
        )
    }

    /// Sends `signal` to the process.
    func signal(_ signal: Int32) {
        kill(self.processID, signal)
    }

    /// Waits for the process to exit; returns its exit status (128 + the signal that ended it).
    func waitForExit() async -> Int32 {
        await self.exit.value
    }

    /// Runs `body`, then kills the process with SIGKILL (a no-op once it has exited) and waits for it, also when
    /// `body` throws.
    func whileRunning<Result>(_ body: (SpawnedProcess) async throws -> Result) async throws -> Result {
        do {
            let result = try await body(self)
            kill(self.processID, SIGKILL)
            _ = await self.waitForExit()
            return result
        } catch {
            kill(self.processID, SIGKILL)
            _ = await self.waitForExit()
            throw error
        }
    }
}
