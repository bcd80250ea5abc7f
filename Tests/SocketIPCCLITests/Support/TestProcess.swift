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

/// The directory that holds the built products: the `socket-ipc` binary sits next to the test bundle, as in
/// swift-argument-parser's `ArgumentParserTestHelpers` (`debugURL`).
let productsDirectory: URL = {
    let bundleURL = Bundle(for: BundleMarker.self).bundleURL
    return bundleURL.lastPathComponent.hasSuffix("xctest") ? bundleURL.deletingLastPathComponent() : bundleURL
}()

private final class BundleMarker {}

/// The `socket-ipc` binary under test.
let socketIPCBinary = productsDirectory.appendingPathComponent("socket-ipc").path

/// A process started by a test: its standard output and standard error are read line by line as they come, and it
/// is killed if it is still running after `timeLimit` (a safety net against hanging the test run, never a way to
/// wait for something).
final class TestProcess: Sendable {
    let process: Process
    /// What the process writes to standard output.
    let standardOutput: OutputReader
    /// What the process writes to standard error.
    let standardError: OutputReader
    private let exit: Task<Int32, Never>
    private let watchdog: Task<Void, Never>

    /// Starts `executable` with `arguments`; standard input gets `input` and is then closed (`/dev/null` when `nil`).
    init(
        executable: String,
        _ arguments: [String],
        input: Data? = nil,
        timeLimit: Duration = .seconds(60)
    ) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        let inputPipe = input.map { _ in Pipe() }
        process.standardInput = inputPipe ?? FileHandle.nullDevice
        let (exits, exited) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { process in
            exited.yield(process.terminationStatus)
            exited.finish()
        }
        try launchSerialized(process)
        self.process = process
        self.standardOutput = OutputReader(output.fileHandleForReading)
        self.standardError = OutputReader(error.fileHandleForReading)
        self.exit = Task {
            var iterator = exits.makeAsyncIterator()
            return await iterator.next() ?? -1
        }
        let pid = process.processIdentifier
        let exit = self.exit
        self.watchdog = Task {
            try? await Task.sleep(for: timeLimit)
            if !Task.isCancelled {
                kill(pid, SIGKILL)
                _ = await exit.value
            }
        }
        if let input, let inputPipe {
            let writer = Thread {
                try? inputPipe.fileHandleForWriting.write(contentsOf: input)
                try? inputPipe.fileHandleForWriting.close()
            }
            writer.start()
        }
    }

    /// Starts `socket-ipc arguments...`.
    static func socketIPC(_ arguments: [String], input: Data? = nil) throws -> TestProcess {
        try TestProcess(executable: socketIPCBinary, arguments, input: input)
    }

    /// Starts `/bin/sh -c script`, with the `socket-ipc` binary as `$0` and `arguments` as `$1...`.
    static func shell(_ script: String, _ arguments: [String] = []) throws -> TestProcess {
        try TestProcess(executable: "/bin/sh", ["-c", script, socketIPCBinary] + arguments)
    }

    /// The process id.
    var processID: Int32 { self.process.processIdentifier }

    /// Sends `signal` to the process.
    func signal(_ signal: Int32) {
        kill(self.processID, signal)
    }

    /// Waits for the process to exit; returns its exit status (or the signal that ended it).
    func waitForExit() async -> Int32 {
        let status = await self.exit.value
        self.watchdog.cancel()
        return status
    }

    /// Kills the process with SIGKILL if it is still running, and waits for it to exit.
    func stop() async {
        if self.process.isRunning { self.signal(SIGKILL) }
        _ = await self.waitForExit()
    }
}

/// Runs `body` with `process` and then stops it (SIGKILL if still running) and waits for it, also when `body` throws.
func withProcess<Result>(
    _ process: TestProcess,
    _ body: (TestProcess) async throws -> Result
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

/// Runs `socket-ipc arguments...` to completion.
/// - Returns: The exit status, standard output and standard error.
func runCLI(_ arguments: [String], input: String? = nil) async throws -> (status: Int32, output: String, error: String)
{
    let process = try TestProcess.socketIPC(arguments, input: input.map { Data($0.utf8) })
    let status = await process.waitForExit()
    let output = await process.standardOutput.text()
    let error = await process.standardError.text()
    return (status, output, error)
}

/// Runs `/bin/sh -c command` to completion.
/// - Returns: The exit status and the bytes written to standard output.
func runShell(_ command: String) async throws -> (status: Int32, output: [UInt8]) {
    let process = try TestProcess(executable: "/bin/sh", ["-c", command])
    let status = await process.waitForExit()
    return (status, Array(await process.standardOutput.data()))
}

/// Reads a pipe on a thread of its own until EOF, handing out its lines as they come and keeping all its bytes.
///
/// Meant for one consumer at a time: a test reads lines in order, then perhaps all the rest.
final class OutputReader: @unchecked Sendable {
    private var lines: AsyncStream<String>.AsyncIterator
    private let bytes = Mutex(Data())
    /// Every line read so far by ``waitForLine(containing:)`` and ``remainingLines()``.
    private(set) var seen: [String] = []

    init(_ handle: FileHandle) {
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        self.lines = lines.makeAsyncIterator()
        let reader = Thread { [self] in
            var pending = Data()
            // read(2) rather than FileHandle.availableData, which traps when a read is interrupted (EINTR).
            let descriptor = handle.fileDescriptor
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
            if !pending.isEmpty { continuation.yield(String(decoding: pending, as: UTF8.self)) }
            continuation.finish()
        }
        reader.start()
    }

    /// Reads lines until one contains `text` and returns it; `nil` when the output ends first.
    func waitForLine(containing text: String) async -> String? {
        while let line = await self.lines.next() {
            self.seen.append(line)
            if line.contains(text) { return line }
        }
        return nil
    }

    /// Reads the rest of the output; returns every line read, from the first.
    func remainingLines() async -> [String] {
        while let line = await self.lines.next() { self.seen.append(line) }
        return self.seen
    }

    /// Waits for the end of the output and returns all its bytes.
    func data() async -> Data {
        _ = await self.remainingLines()
        return self.bytes.withLock { $0 }
    }

    /// Waits for the end of the output and returns it as text.
    func text() async -> String {
        String(decoding: await self.data(), as: UTF8.self)
    }
}

/// What `lstat` tells about a file: its inode, its type and permission bits.
struct FileStatus: Equatable {
    var inode: UInt64
    var isSocket: Bool
    var permissions: UInt32
}

/// `lstat(path)`, or `nil` when there is no such file.
func fileStatus(_ path: String) -> FileStatus? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return FileStatus(
        inode: UInt64(info.st_ino),
        isSocket: (UInt32(info.st_mode) & UInt32(S_IFMT)) == UInt32(S_IFSOCK),
        permissions: UInt32(info.st_mode) & 0o7777
    )
}

/// Whether `tool` is an executable on the `PATH`.
func toolExists(_ tool: String) -> Bool {
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
    }
}

/// Whether `nc` is OpenBSD's netcat, which has `-U` (Unix domain sockets) and `-N` (shut down the socket's write
/// side at EOF on standard input).
let netcatIsOpenBSD: Bool = {
    guard toolExists("nc") else { return false }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["nc", "-h"]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    guard (try? launchSerialized(process)) != nil else { return false }
    let help = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return help.contains("OpenBSD netcat")
}()
