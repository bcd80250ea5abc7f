import Foundation
import Synchronization

#if os(Linux)
    import CSocketIPCLinux
#endif
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One run of `/bin/sh -c COMMAND` for `serve --exec`: writes the input to its standard input, reads its standard
/// output (up to a maximum) and standard error (the first bytes), kills it when it runs too long, writes too much or
/// is no longer wanted, and reaps it.
///
/// The child runs in a process group of its own, so that killing the group kills what the shell started too; its
/// signal dispositions and mask are the defaults (the server ignores SIGPIPE and traps SIGINT and SIGTERM); it
/// inherits no descriptor but its standard input, output and error. On Linux it is started with `PR_SET_PDEATHSIG`
/// (SIGKILL), so that it does not outlive a server killed with SIGKILL, which leaves no chance to kill it otherwise
/// (`csocketipc_spawn_killed_with_parent`); what the shell itself started in the background is not covered. The
/// child is started, and all the waiting (`poll`, `waitpid`) happens, on a thread of the run's own, never on an
/// event loop or Swift's cooperative threads: that thread lives until the child is reaped, as the death signal
/// needs (it comes when the thread that started the child ends).
final class ExecProcess: @unchecked Sendable {
    /// The most descriptors one run holds at once: both ends of its four pipes (standard input, output and error, and
    /// the wake pipe), until the child's three ends are closed once it has started.
    static let descriptorsPerRun = 8

    /// How the child ended.
    enum Termination: Equatable, Sendable {
        /// It exited with this status.
        case exited(Int32)
        /// A signal ended it.
        case signalled(Int32)
        /// `waitpid(2)` failed with this errno (`ECHILD`: something else in the process reaped it), so how it ended
        /// is unknown.
        case unknown(Int32)
    }

    /// Why the run was cut short (the child was killed).
    enum Stop: Sendable {
        /// Its standard output was over the maximum.
        case outputTooLarge
        /// It ran longer than the timeout.
        case timedOut
        /// The task waiting for it was cancelled (its connection closed, or the server's grace period ended).
        case cancelled
    }

    /// What a run came to.
    struct Outcome: Sendable {
        /// How the child ended.
        var termination: Termination
        /// Its standard output (empty when not kept).
        var output: [UInt8]
        /// The first bytes of its standard error.
        var errorOutput: [UInt8]
        /// Whether standard error had more than ``errorOutput``.
        var errorOutputTruncated: Bool
        /// Why it was killed, if it was.
        var stop: Stop?
    }

    /// What a run may do.
    struct Limits: Sendable {
        /// The most bytes of standard output kept; one more stops the run.
        var maximumOutput: Int
        /// The most bytes of standard error kept; the rest is read and dropped.
        var maximumErrorOutput: Int
        /// How long the child may run.
        var timeout: Duration
        /// Whether to keep standard output; when `false` it is read and dropped, and never too large.
        var keepsOutput: Bool
    }

    private let processID: pid_t
    private var standardInput: Int32
    private var standardOutput: Int32
    private var standardError: Int32
    /// Written to once to wake the I/O thread when the run is cancelled.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// Whether the wake pipe is closed: a cancellation after the end must not write to a reused descriptor.
    private let finished = Mutex(false)

    /// Runs `/bin/sh -c command` with `environment` (`NAME=value` entries), writes `input` to it and waits for it,
    /// within `limits`; cancelling the calling task kills it.
    /// - Returns: How it ended and what it wrote.
    /// - Throws: `ExecSpawnError` when the process or its pipes cannot be made.
    static func run(command: String, environment: [String], input: [UInt8], limits: Limits) async throws -> Outcome {
        let started = StartedProcess()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let thread = Thread {
                    let process: ExecProcess
                    do {
                        process = try ExecProcess(command: command, environment: environment)
                    } catch {
                        continuation.resume(throwing: error)
                        return
                    }
                    started.started(process)
                    continuation.resume(returning: process.communicate(input: input, limits: limits))
                }
                thread.start()
            }
        } onCancel: {
            started.cancel()
        }
    }

    /// The process of a run, once its thread has started it, and whether the run was cancelled before that.
    private final class StartedProcess: Sendable {
        private let state = Mutex<(process: ExecProcess?, cancelled: Bool)>((nil, false))

        /// The run's thread started `process`: it is cancelled at once if the run was.
        func started(_ process: ExecProcess) {
            if self.state.withLock({ state in
                state.process = process
                return state.cancelled
            }) {
                process.cancel()
            }
        }

        /// Cancels the run: its process, or the process when it starts.
        func cancel() {
            self.state.withLock { state in
                state.cancelled = true
                return state.process
            }?.cancel()
        }
    }

    private init(command: String, environment: [String]) throws {
        // Each pipe made is closed again if a later one cannot be (found by fault injection: a pipe2 failing with
        // EMFILE leaked the pipes made before it, so that a server near its descriptor limit lost more with each run).
        var pipes: [(read: Int32, write: Int32)] = []
        do {
            for _ in 0..<4 { pipes.append(try Self.makePipe()) }
        } catch {
            for pipe in pipes {
                close(pipe.read)
                close(pipe.write)
            }
            throw error
        }
        let (input, output, errors, wake) = (pipes[0], pipes[1], pipes[2], pipes[3])
        let childEnds = [input.read, output.write, errors.write]
        defer { for descriptor in childEnds { close(descriptor) } }
        do {
            self.processID = try Self.spawn(
                command: command, environment: environment, input: input.read, output: output.write, error: errors.write
            )
        } catch {
            for descriptor in [input.write, output.read, errors.read, wake.read, wake.write] { close(descriptor) }
            throw error
        }
        self.standardInput = input.write
        self.standardOutput = output.read
        self.standardError = errors.read
        self.wakeRead = wake.read
        self.wakeWrite = wake.write
        for descriptor in [input.write, output.read, errors.read, wake.read] {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        }
    }

    /// Wakes the I/O thread to kill the child; does nothing once the run has ended.
    private func cancel() {
        self.finished.withLock { finished in
            guard !finished else { return }
            var byte: UInt8 = 1
            _ = write(self.wakeWrite, &byte, 1)
        }
    }

    /// On the run's own thread: feeds standard input, drains standard output and error, and reaps the child.
    private func communicate(input: [UInt8], limits: Limits) -> Outcome {
        let deadline = ContinuousClock.now.advanced(by: limits.timeout)
        var outcome = Outcome(termination: .exited(0), output: [], errorOutput: [], errorOutputTruncated: false)
        var written = 0
        if input.isEmpty { Self.closeOnce(&self.standardInput) }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while (self.standardOutput >= 0 || self.standardError >= 0) && outcome.stop == nil {
            guard let timeout = Self.milliseconds(until: deadline) else {
                outcome.stop = .timedOut
                break
            }
            var descriptors = [pollfd(fd: self.wakeRead, events: Int16(POLLIN), revents: 0)]
            for (descriptor, events) in [
                (self.standardInput, POLLOUT), (self.standardOutput, POLLIN), (self.standardError, POLLIN),
            ] where descriptor >= 0 {
                descriptors.append(pollfd(fd: descriptor, events: Int16(events), revents: 0))
            }
            let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
            if ready < 0 {
                // EINTR: again at once; anything else (ENOMEM) again after a moment, not in a tight loop (found by a
                // review), the deadline still watched above.
                if errno != EINTR { usleep(10_000) }
                continue
            }
            for entry in descriptors where entry.revents != 0 {
                switch entry.fd {
                case self.wakeRead:
                    outcome.stop = .cancelled
                case self.standardInput:
                    let count = input[written...].withUnsafeBytes {
                        write(self.standardInput, $0.baseAddress, min($0.count, 65536))
                    }
                    if count > 0 { written += count }
                    // EPIPE: the command stopped reading; what it wrote still counts.
                    if written == input.count || (count < 0 && errno != EAGAIN && errno != EINTR) {
                        Self.closeOnce(&self.standardInput)
                    }
                case self.standardOutput:
                    let count = Self.readChunk(&self.standardOutput, into: &chunk)
                    guard count > 0, limits.keepsOutput else { break }
                    if outcome.output.count + count > limits.maximumOutput {
                        outcome.stop = .outputTooLarge
                    } else {
                        outcome.output += chunk[..<count]
                    }
                case self.standardError:
                    let count = Self.readChunk(&self.standardError, into: &chunk)
                    guard count > 0 else { break }
                    let room = limits.maximumErrorOutput - outcome.errorOutput.count
                    outcome.errorOutput += chunk[..<min(count, max(room, 0))]
                    if count > room { outcome.errorOutputTruncated = true }
                default:
                    break
                }
            }
        }
        Self.closeOnce(&self.standardInput)
        Self.closeOnce(&self.standardOutput)
        Self.closeOnce(&self.standardError)
        outcome.termination = self.reap(deadline: deadline, stop: &outcome.stop)
        self.finished.withLock { finished in
            finished = true
            close(self.wakeRead)
            close(self.wakeWrite)
        }
        return outcome
    }

    /// Waits for the child to exit (killing its process group first when `stop` is set, or when `deadline` passes
    /// or the run is cancelled meanwhile) and reaps it.
    private func reap(deadline: ContinuousClock.Instant, stop: inout Stop?) -> Termination {
        var status: Int32 = 0
        if stop == nil {
            // The child closed its output; it normally exits at once, but may linger: wait, watching the deadline.
            while true {
                let reaped = waitpid(self.processID, &status, WNOHANG)
                if reaped == self.processID { return Self.termination(status) }
                if reaped < 0 && errno != EINTR { return .unknown(errno) }
                guard let timeout = Self.milliseconds(until: deadline) else {
                    stop = .timedOut
                    break
                }
                var wake = [pollfd(fd: self.wakeRead, events: Int16(POLLIN), revents: 0)]
                let polled = poll(&wake, 1, min(timeout, 10))
                if polled < 0 && errno != EINTR { usleep(10_000) }
                if polled > 0 {
                    stop = .cancelled
                    break
                }
            }
        }
        // The child is not reaped yet, so its pid (and group id) cannot have been reused.
        kill(-self.processID, SIGKILL)
        kill(self.processID, SIGKILL)
        while waitpid(self.processID, &status, 0) < 0 {
            if errno != EINTR { return .unknown(errno) }
        }
        return Self.termination(status)
    }

    /// Reads into `chunk`; closes `descriptor` (setting it to -1) at end of file or on an error.
    /// - Returns: The count read, 0 when there was nothing.
    private static func readChunk(_ descriptor: inout Int32, into chunk: inout [UInt8]) -> Int {
        let fd = descriptor
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count > 0 { return count }
        if count < 0 && (errno == EAGAIN || errno == EINTR) { return 0 }
        Self.closeOnce(&descriptor)
        return 0
    }

    /// Closes `descriptor` unless it is closed already, and marks it closed (-1).
    private static func closeOnce(_ descriptor: inout Int32) {
        guard descriptor >= 0 else { return }
        close(descriptor)
        descriptor = -1
    }

    /// The milliseconds left until `deadline` for `poll`, at least 1; `nil` once it has passed.
    private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32? {
        let left = ContinuousClock.now.duration(to: deadline)
        guard left > .zero else { return nil }
        let milliseconds = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(milliseconds, 1))
    }

    /// The termination a `waitpid` status describes (`WIFEXITED`, `WEXITSTATUS`, `WTERMSIG`).
    private static func termination(_ status: Int32) -> Termination {
        status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signalled(status & 0x7f)
    }

    /// A pipe whose both ends are closed on `exec`: made so at once with `pipe2` where the C library has it (glibc,
    /// which declares it only for `_GNU_SOURCE`), else marked right after `pipe`.
    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var descriptors: [Int32] = [-1, -1]
        if let pipe2 = Self.pipe2 {
            guard pipe2(&descriptors, O_CLOEXEC) == 0 else { throw ExecSpawnError(function: "pipe2", code: errno) }
        } else {
            guard pipe(&descriptors) == 0 else { throw ExecSpawnError(function: "pipe", code: errno) }
            for descriptor in descriptors { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        }
        return (descriptors[0], descriptors[1])
    }

    /// `pipe2(2)`, where the C library has it.
    private static let pipe2: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32)? = {
        guard let symbol = dlsym(nil, "pipe2") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32).self)
    }()

    /// Starts `/bin/sh -c command` in a process group of its own, with `input`, `output` and `error` as its
    /// standard descriptors, default signal dispositions, an empty signal mask and the soft descriptor limit this
    /// process started with; on Linux, killed when the calling thread (or the whole process) ends.
    private static func spawn(
        command: String, environment: [String], input: Int32, output: Int32, error: Int32
    ) throws -> pid_t {
        // The soft descriptor limit the process started with, not the one its server raised (ProcessStart).
        let softLimit = ProcessStart.descriptorSoftLimit.flatMap { $0 == rlim_t.max ? nil : Int64(exactly: $0) }
        #if os(Linux)
            let shell: [String] = ["/bin/sh", "-c", command]
        #else
            // Darwin (untested): posix_spawn cannot set a limit, so the shell lowers it.
            let shell: [String] = ["/bin/sh", "-c", (softLimit.map { "ulimit -S -n \($0) 2>/dev/null; " } ?? "") + command]
        #endif
        let arguments: [UnsafeMutablePointer<CChar>?] = shell.map { strdup($0) } + [nil]
        let environment: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer { for pointer in arguments + environment { free(pointer) } }
        #if os(Linux)
            let started = csocketipc_spawn_killed_with_parent(
                "/bin/sh", arguments, environment, input, output, error, softLimit ?? -1)
            guard started > 0 else { throw ExecSpawnError(function: "fork and exec of /bin/sh", code: errno) }
            return started
        #else
            // Darwin (untested): no parent-death signal.
            return try Self.posixSpawn(arguments: arguments, environment: environment, input: input, output: output, error: error)
        #endif
    }

    #if !os(Linux)
    /// posix_spawn(3) of `/bin/sh` with `arguments` and `environment`, in a process group of its own, with default
    /// signal dispositions, an empty mask and `input`, `output` and `error` as its standard descriptors.
    private static func posixSpawn(
        arguments: [UnsafeMutablePointer<CChar>?],
        environment: [UnsafeMutablePointer<CChar>?],
        input: Int32,
        output: Int32,
        error: Int32
    ) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, error, 2)
        // Every other descriptor is closed too, also one that lacks FD_CLOEXEC (glibc 2.34 and later).
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var processID: pid_t = 0
        let result = posix_spawn(&processID, "/bin/sh", &actions, &attributes, arguments, environment)
        guard result == 0 else { throw ExecSpawnError(function: "posix_spawn", code: result) }
        return processID
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np`, where the C library has it.
    private static let addCloseFrom:
        (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32)? = {
            guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
            return unsafeBitCast(
                symbol,
                to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32).self
            )
        }()
    #endif
}

/// `serve --exec` could not start its command: a system call failed.
struct ExecSpawnError: Error, CustomStringConvertible {
    /// The call that failed.
    var function: String
    /// Its error number.
    var code: Int32

    /// What failed, and the system's words for why.
    var description: String {
        "could not run the command: \(self.function) failed: \(String(cString: strerror(self.code)))"
    }
}
