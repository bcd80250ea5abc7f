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

/// The directory that holds the built products: `kv-daemon` and `kv` sit next to the test bundle, as in
/// swift-argument-parser's `ArgumentParserTestHelpers` (`debugURL`) and the CLI tests' `TestProcess.swift`.
let productsDirectory: URL = {
    let bundleURL = Bundle(for: BundleMarker.self).bundleURL
    return bundleURL.lastPathComponent.hasSuffix("xctest") ? bundleURL.deletingLastPathComponent() : bundleURL
}()

private final class BundleMarker {}

/// A process of the example started by a test: its standard output and standard error are read line by line as they
/// come, and it is killed if it is still running after `timeLimit` (a safety net against hanging the test run, never
/// a way to wait for something).
final class ExampleProcess: Sendable {
    let process: Process
    /// What the process writes to standard output.
    let standardOutput: OutputReader
    /// What the process writes to standard error.
    let standardError: OutputReader
    private let exit: Task<Int32, Never>
    private let watchdog: Task<Void, Never>

    /// Starts the built product `name` (`kv-daemon` or `kv`) with `arguments`; standard input is `/dev/null`.
    init(_ name: String, _ arguments: [String], timeLimit: Duration = .seconds(60)) throws {
        let process = Process()
        process.executableURL = productsDirectory.appendingPathComponent(name)
        process.arguments = arguments
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        process.standardInput = FileHandle.nullDevice
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
    }

    /// Sends `signal` to the process.
    func signal(_ signal: Int32) {
        kill(self.process.processIdentifier, signal)
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

/// Runs `body` with `process`, then stops it (SIGKILL if still running) and waits for it, also when `body` throws.
func withProcess<Result>(_ process: ExampleProcess, _ body: (ExampleProcess) async throws -> Result) async throws
    -> Result
{
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

/// Runs `kv arguments...` to completion.
/// - Returns: The exit status, standard output and standard error.
func runKV(_ arguments: [String]) async throws -> (status: Int32, output: String, error: String) {
    let process = try ExampleProcess("kv", arguments)
    let status = await process.waitForExit()
    return (status, await process.standardOutput.text(), await process.standardError.text())
}

/// Reads a pipe on a thread of its own until EOF, handing out its lines as they come and keeping all its bytes.
///
/// Meant for one consumer at a time: a test reads lines in order, then perhaps all the rest.
final class OutputReader: @unchecked Sendable {
    private var lines: AsyncStream<String>.AsyncIterator
    private let bytes = Mutex(Data())

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

    /// Reads lines until one is `line` and returns `true`; `false` when the output ends first.
    func waitForLine(_ line: String) async -> Bool {
        while let next = await self.lines.next() {
            if next == line { return true }
        }
        return false
    }

    /// Reads lines until one contains `text` and returns it; `nil` when the output ends first.
    func waitForLine(containing text: String) async -> String? {
        while let line = await self.lines.next() {
            if line.contains(text) { return line }
        }
        return nil
    }

    /// Waits for the end of the output and returns it as text.
    func text() async -> String {
        while await self.lines.next() != nil {}
        return String(decoding: self.bytes.withLock { $0 }, as: UTF8.self)
    }
}
