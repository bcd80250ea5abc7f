import Foundation
import Synchronization

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux (Glibc) only: the Darwin and Musl branches are untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One launch at a time across every test of the package (they all run in one process, in parallel): no other launch
/// runs between making a launch's descriptors and starting its child, so no child inherits another's pipe ends even
/// where a pipe cannot be made close-on-exec at once.
private let launches = Mutex(())

/// A process started by a test with `posix_spawn(3)`, never Foundation's `Process`.
///
/// swift-corelibs-foundation's `Process.run()` has crashed the test process now and then (a `memmove` inside `run()`,
/// even with launches serialized); it lets the child inherit the launching thread's blocked signals; and it learns
/// that a child exited from a descriptor the child inherits, so a child that closes it early (such as
/// `systemd-socket-activate`) makes it miss every other child's exit. Here:
/// - the child starts with no signal blocked and every signal at its default action (`POSIX_SPAWN_SETSIGMASK`,
///   `POSIX_SPAWN_SETSIGDEF`), even when the test process ignores one (service-lifecycle's signal handling does);
/// - every descriptor the parent keeps is close-on-exec, and the pipes are made under one lock shared by all launches;
/// - a thread of its own waits for this pid alone (`waitid` without reaping, then `waitpid` under a lock), so
///   ``signal(_:)`` never reaches another process that reused the pid;
/// - standard output and standard error are read as they come, line by line, each by an ``OutputReader``;
/// - the process is killed (SIGKILL) if it still runs after `timeLimit`: a safety net against hanging the test run,
///   never a way to wait for something.
public final class SpawnedProcess: Sendable {
    /// What the process reads on standard input.
    public enum Input: Sendable {
        /// `/dev/null`.
        case nullDevice
        /// These bytes, written by a thread of its own and followed by EOF (the pipe is closed once they are written,
        /// or as soon as the process stops reading).
        case data(Data)
    }

    /// Where the process's standard error goes.
    public enum ErrorOutput: Sendable {
        /// A pipe of its own, read by ``standardError``.
        case separate
        /// The standard output pipe, interleaved as written; ``standardError`` is then empty.
        case mergedWithOutput
    }

    /// The process id: the process, or its zombie, is this pid until ``waitForExit()`` returns.
    public let processID: pid_t
    /// What the process writes to standard output (and to standard error with ``ErrorOutput/mergedWithOutput``).
    public let standardOutput: OutputReader
    /// What the process writes to standard error; ends at once, empty, with ``ErrorOutput/mergedWithOutput``.
    public let standardError: OutputReader
    /// The exit status once the process has been reaped, `nil` before; reaping happens under its lock.
    private let status: ExitStatus
    private let exit: Task<Int32, Never>
    private let watchdog: Task<Void, Never>?

    /// Starts `executable` (a path: there is no `PATH` search) with `arguments`.
    /// - Parameters:
    ///   - input: What the process reads on standard input.
    ///   - errorOutput: Whether standard error has a pipe of its own or goes to the standard output pipe.
    ///   - environment: The process's whole environment; `nil` for the test process's own.
    ///   - timeLimit: After this the process is killed with SIGKILL if it still runs; `nil` for no limit.
    /// - Throws: `POSIXError` when the pipes cannot be made or the process cannot be started (no such executable).
    public init(
        executable: String,
        arguments: [String],
        input: Input = .nullDevice,
        errorOutput: ErrorOutput = .separate,
        environment: [String: String]? = nil,
        timeLimit: Duration? = .seconds(60)
    ) throws {
        let child = try launches.withLock { _ in
            try spawn(executable, arguments, input: input, errorOutput: errorOutput, environment: environment)
        }
        self.processID = child.pid
        self.standardOutput = OutputReader(descriptor: child.output)
        self.standardError = child.error.map { OutputReader(descriptor: $0) } ?? OutputReader(descriptor: nil)
        if case .data(let data) = input, let descriptor = child.input {
            writeAndClose(data, to: descriptor)
        }
        let status = ExitStatus()
        self.status = status
        let (exits, exited) = AsyncStream.makeStream(of: Int32.self)
        let pid = child.pid
        let reaper = Thread {
            let code = reap(pid, into: status)
            exited.yield(code)
            exited.finish()
        }
        reaper.start()
        self.exit = Task {
            var iterator = exits.makeAsyncIterator()
            return await iterator.next() ?? -1
        }
        if let timeLimit {
            let exit = self.exit
            self.watchdog = Task {
                try? await Task.sleep(for: timeLimit)
                if !Task.isCancelled {
                    status.value.withLock { if $0 == nil { _ = kill(pid, SIGKILL) } }
                    _ = await exit.value
                }
            }
        } else {
            self.watchdog = nil
        }
    }

    /// Whether the process has not been reaped yet (a process that has just exited may still count as running for a
    /// moment, until its reaper thread wakes).
    public var isRunning: Bool {
        self.status.value.withLock { $0 == nil }
    }

    /// Sends `signal` to the process; does nothing once it has been reaped.
    public func signal(_ signal: Int32) {
        self.status.value.withLock { if $0 == nil { _ = kill(self.processID, signal) } }
    }

    /// Waits for the process to exit; returns its exit status, or 128 + the signal that ended it, as a shell reports
    /// it (`128 + SIGKILL` for a process killed with SIGKILL).
    public func waitForExit() async -> Int32 {
        let status = await self.exit.value
        self.watchdog?.cancel()
        return status
    }

    /// Kills the process with SIGKILL if it is still running, and waits for it to exit.
    public func stop() async {
        self.signal(SIGKILL)
        _ = await self.waitForExit()
    }

    /// Runs `executable` with `arguments` to completion on the calling thread, without `async`, standard error merged
    /// into standard output: for a check made while tests are being set up, such as a trait's condition.
    /// - Returns: The exit status (or 128 + the signal that ended it) and what the process wrote.
    /// - Throws: `POSIXError` when the process cannot be started.
    public static func runSynchronously(executable: String, arguments: [String]) throws -> (status: Int32, output: Data) {
        let child = try launches.withLock { _ in
            try spawn(executable, arguments, input: .nullDevice, errorOutput: .mergedWithOutput, environment: nil)
        }
        let output = readToEnd(child.output)
        close(child.output)
        return (reap(child.pid, into: ExitStatus()), output)
    }
}

/// Runs `body` with `process`, then stops it (SIGKILL if still running) and waits for it, also when `body` throws.
public func withProcess<Result>(
    _ process: SpawnedProcess,
    _ body: (SpawnedProcess) async throws -> Result
) async throws -> Result {
    let result: Result
    do {
        result = try await body(process)
    } catch {
        await process.stop()
        throw error
    }
    await process.stop()
    return result
}

/// A process's exit status once it has been reaped, `nil` before; reaping happens under its lock.
private final class ExitStatus: Sendable {
    let value = Mutex<Int32?>(nil)
}

/// The parent's ends of a started child's pipes, each close-on-exec and owned by the caller.
private struct Child {
    var pid: pid_t
    var input: Int32?
    var output: Int32
    var error: Int32?
}

/// Makes a pipe whose two ends are close-on-exec. `pipe2(O_CLOEXEC)` would make them so at once, but Swift's Glibc
/// module does not declare it (and Darwin has none), so the flag is set right after `pipe`: called under `launches`,
/// no launch of these tests runs in between.
private func makePipe() throws -> (read: Int32, write: Int32) {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    for end in ends where fcntl(end, F_SETFD, FD_CLOEXEC) != 0 {
        let code = errno
        close(ends[0])
        close(ends[1])
        throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
    }
    return (ends[0], ends[1])
}

/// Starts the child; called under `launches`. The child's standard descriptors are `dup2` copies of the pipe ends
/// (`dup2` clears close-on-exec on the copy); every pipe end stays close-on-exec and the child's ends are closed in
/// the parent once it has started.
private func spawn(
    _ executable: String,
    _ arguments: [String],
    input: SpawnedProcess.Input,
    errorOutput: SpawnedProcess.ErrorOutput,
    environment: [String: String]?
) throws -> Child {
    var opened: [Int32] = []
    var childEnds: [Int32] = []
    var spawned = false
    defer {
        for descriptor in childEnds { close(descriptor) }
        if !spawned { for descriptor in opened { close(descriptor) } }
    }
    var inputPipe: (read: Int32, write: Int32)?
    if case .data = input {
        let ends = try makePipe()
        opened.append(ends.write)
        childEnds.append(ends.read)
        inputPipe = ends
    }
    let output = try makePipe()
    opened.append(output.read)
    childEnds.append(output.write)
    var errorPipe: (read: Int32, write: Int32)?
    if case .separate = errorOutput {
        let ends = try makePipe()
        opened.append(ends.read)
        childEnds.append(ends.write)
        errorPipe = ends
    }

    #if canImport(Darwin)
        var actions: posix_spawn_file_actions_t? = nil
        var attributes: posix_spawnattr_t? = nil
    #else
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
    #endif
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let inputPipe {
        posix_spawn_file_actions_adddup2(&actions, inputPipe.read, 0)
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    posix_spawn_file_actions_adddup2(&actions, output.write, 1)
    posix_spawn_file_actions_adddup2(&actions, errorPipe?.write ?? output.write, 2)

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
    defer { for argument in argv { free(argument) } }
    let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
    defer { for variable in envp ?? [] { free(variable) } }

    #if canImport(Darwin)
        let inherited = _NSGetEnviron().pointee  // untested
    #else
        let inherited = environ
    #endif
    var pid: pid_t = 0
    let result: Int32
    if let envp {
        result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    } else {
        result = posix_spawn(&pid, executable, &actions, &attributes, argv, inherited)
    }
    guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EIO) }
    spawned = true
    return Child(pid: pid, input: inputPipe?.write, output: output.read, error: errorPipe?.read)
}

/// Waits on the calling thread until `pid` exits, then reaps it under `status`'s lock and stores its status there, so
/// that whoever signals the process under that lock never reaches a reused pid.
/// - Returns: The exit status, or 128 + the signal that ended it.
private func reap(_ pid: pid_t, into status: ExitStatus) -> Int32 {
    // Wait without reaping: the pid stays this process's (a zombie) until waitpid below.
    var info = siginfo_t()
    while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
    return status.value.withLock { stored in
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        let signal = raw & 0x7F
        let code = signal == 0 ? (raw >> 8) & 0xFF : 128 + signal
        stored = code
        return code
    }
}

/// Writes `data` to `descriptor` on a thread of its own, then closes it. SIGPIPE is blocked on that thread, so a
/// process that stops reading early makes the write fail with EPIPE rather than kill the test process.
private func writeAndClose(_ data: Data, to descriptor: Int32) {
    let writer = Thread {
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let count = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                offset += count
            }
        }
        close(descriptor)
        // A SIGPIPE raised by the write above is pending on this thread alone and is discarded when it ends.
    }
    writer.start()
}

/// Reads `descriptor` until EOF on the calling thread.
private func readToEnd(_ descriptor: Int32) -> Data {
    var result = Data()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        result.append(contentsOf: chunk[..<count])
    }
    return result
}

/// Reads a pipe on a thread of its own until EOF, handing out its lines as they come and keeping all its bytes; the
/// pipe is closed at EOF.
///
/// Meant for one consumer at a time: a test reads lines in order, then perhaps all the rest.
public final class OutputReader: @unchecked Sendable {
    private var lines: AsyncStream<String>.AsyncIterator
    private let bytes = Mutex(Data())
    /// Every line read so far by ``waitForLine(_:)``, ``waitForLine(containing:)`` and ``remainingLines()``.
    public private(set) var seen: [String] = []

    /// Reads `descriptor`, which the reader then owns; `nil` for an output that ends at once, empty.
    init(descriptor: Int32?) {
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        self.lines = lines.makeAsyncIterator()
        guard let descriptor else {
            continuation.finish()
            return
        }
        let reader = Thread { [self] in
            var pending = Data()
            // read(2) rather than FileHandle.availableData, which traps when a read is interrupted (EINTR).
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                let data = Data(chunk[..<count])
                self.bytes.withLock { $0.append(data) }
                pending.append(data)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    continuation.yield(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            close(descriptor)
            if !pending.isEmpty { continuation.yield(String(decoding: pending, as: UTF8.self)) }
            continuation.finish()
        }
        reader.start()
    }

    /// Reads lines until one is `line` and returns `true`; `false` when the output ends first.
    public func waitForLine(_ line: String) async -> Bool {
        while let next = await self.lines.next() {
            self.seen.append(next)
            if next == line { return true }
        }
        return false
    }

    /// Reads lines until one contains `text` and returns it; `nil` when the output ends first.
    public func waitForLine(containing text: String) async -> String? {
        while let line = await self.lines.next() {
            self.seen.append(line)
            if line.contains(text) { return line }
        }
        return nil
    }

    /// Reads the rest of the output; returns every line read, from the first.
    public func remainingLines() async -> [String] {
        while let line = await self.lines.next() { self.seen.append(line) }
        return self.seen
    }

    /// Waits for the end of the output and returns all its bytes.
    public func data() async -> Data {
        _ = await self.remainingLines()
        return self.bytes.withLock { $0 }
    }

    /// Waits for the end of the output and returns it as text.
    public func text() async -> String {
        String(decoding: await self.data(), as: UTF8.self)
    }
}
