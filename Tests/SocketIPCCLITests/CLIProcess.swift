import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The `socket-ipc` binary built next to this test bundle.
let socketIPCBinary: String = {
    let testBinary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var directory = URL(fileURLWithPath: testBinary).deletingLastPathComponent()
    // On Linux the test binary is `.build/debug/XPackageTests.xctest`; on Darwin it sits inside a bundle.
    while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("socket-ipc").path),
        directory.path != "/"
    {
        directory.deleteLastPathComponent()
    }
    return directory.appendingPathComponent("socket-ipc").path
}()

/// A child process whose standard output is read line by line as it comes.
final class CLIProcess: @unchecked Sendable {
    let process = Process()
    private let lines: AsyncStream<String>
    private var iterator: AsyncStream<String>.AsyncIterator
    private(set) var seen: [String] = []
    private let errorPipe = Pipe()

    /// Starts `socket-ipc arguments...`, or `/bin/sh -c script` when `shell` is given (with the binary as `$0`).
    init(_ arguments: [String], shell: String? = nil) throws {
        let output = Pipe()
        if let shell {
            self.process.executableURL = URL(fileURLWithPath: "/bin/sh")
            self.process.arguments = ["-c", shell, socketIPCBinary] + arguments
        } else {
            self.process.executableURL = URL(fileURLWithPath: socketIPCBinary)
            self.process.arguments = arguments
        }
        self.process.standardOutput = output
        self.process.standardError = self.errorPipe
        self.process.standardInput = FileHandle.nullDevice
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        self.lines = lines
        self.iterator = lines.makeAsyncIterator()
        let handle = output.fileHandleForReading
        let reader = Thread {
            var pending = Data()
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending.append(data)
                while let newline = pending.firstIndex(of: 0x0A) {
                    continuation.yield(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            if !pending.isEmpty { continuation.yield(String(decoding: pending, as: UTF8.self)) }
            continuation.finish()
        }
        try self.process.run()
        reader.start()
    }

    /// Reads output lines until one contains `text`; returns it, or nil if the output ended first.
    func waitForLine(containing text: String) async -> String? {
        while let line = await self.iterator.next() {
            self.seen.append(line)
            if line.contains(text) { return line }
        }
        return nil
    }

    /// Reads the rest of the output.
    func remainingLines() async -> [String] {
        while let line = await self.iterator.next() { self.seen.append(line) }
        return self.seen
    }

    /// Waits for the process to exit; its status.
    func waitForExit() async -> Int32 {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                self.process.waitUntilExit()
                continuation.resume(returning: self.process.terminationStatus)
            }
        }
    }

    var standardError: String {
        String(decoding: self.errorPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    func signal(_ signal: Int32) {
        kill(self.process.processIdentifier, signal)
    }

    /// Kills the process if it still runs, and reaps it.
    func stop() async {
        if self.process.isRunning { self.signal(SIGKILL) }
        _ = await self.waitForExit()
    }
}

/// Runs `socket-ipc arguments...` to completion: its exit status, standard output and standard error.
func runCLI(_ arguments: [String], stdin: String? = nil) async throws -> (status: Int32, output: String, error: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: socketIPCBinary)
    process.arguments = arguments
    let output = Pipe()
    let error = Pipe()
    process.standardOutput = output
    process.standardError = error
    let input = Pipe()
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    }
    return await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            let out = output.fileHandleForReading.readDataToEndOfFile()
            let err = error.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            continuation.resume(
                returning: (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
            )
        }
    }
}

/// Runs a shell command line to completion: exit status and standard output (bytes).
func runShell(_ command: String) async -> (status: Int32, output: Data) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try? process.run()
    return await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            continuation.resume(returning: (process.terminationStatus, data))
        }
    }
}

/// Runs `body` with a fresh short temporary directory, removed afterwards.
func withTemporaryDirectory<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    var template = Array("/tmp/sipc-cli-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw POSIXError(.EIO)
    }
    let directory = String(cString: made)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

/// `lstat` of `path`: inode and permission bits, or nil.
func fileIdentity(_ path: String) -> (inode: UInt64, permissions: UInt32)? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return (UInt64(info.st_ino), UInt32(info.st_mode) & 0o7777)
}

/// Whether `tool` is on the PATH.
func toolExists(_ tool: String) -> Bool {
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
    }
}
