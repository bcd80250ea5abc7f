import Foundation

/// Runs a child process to completion without blocking Swift's cooperative threads: its output is read on a thread
/// of its own and its exit is reported by `Process`'s termination handler.
enum ChildProcess {
    /// How a child process ended and what it wrote.
    struct Result: Sendable {
        /// The exit status, or the signal that ended the process (``killedBySignal``).
        var status: Int32
        /// Whether a signal ended the process: `status` is then the signal's number.
        var killedBySignal = false
        /// Standard output and standard error, interleaved as written.
        var output: String
    }

    /// Runs `executable` with `arguments`; standard input is `/dev/null`.
    /// - Returns: The exit status and the output, once the process has exited and its output has ended; a child
    ///   whose caller is cancelled meanwhile is sent SIGTERM first.
    /// - Throws: When the process cannot be started.
    static func run(_ executable: String, _ arguments: [String]) async throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let (exits, exited) = AsyncStream.makeStream(of: (status: Int32, signalled: Bool).self)
        process.terminationHandler = { process in
            exited.yield((process.terminationStatus, process.terminationReason == .uncaughtSignal))
            exited.finish()
        }
        try process.run()
        // Cancelling the calling task stops the child (SIGTERM); its exit is still waited for, so none is left behind.
        let pid = process.processIdentifier
        return await withTaskCancellationHandler {
            let output = await withCheckedContinuation { continuation in
                let reader = Thread {
                    continuation.resume(returning: Self.readToEnd(pipe.fileHandleForReading.fileDescriptor))
                }
                reader.start()
            }
            // Waited for in a task of its own, which the caller's cancellation does not end: the exit is real.
            let exit = await Task {
                var statuses = exits.makeAsyncIterator()
                return await statuses.next() ?? (-1, false)
            }.value
            return Result(
                status: exit.status, killedBySignal: exit.signalled, output: String(decoding: output, as: UTF8.self))
        } onCancel: {
            kill(pid, SIGTERM)
        }
    }

    /// Reads `descriptor` until end-of-file with `read(2)`, retrying on `EINTR` (where Foundation's
    /// `readDataToEndOfFile` traps, as it may when child processes exit around it).
    private static func readToEnd(_ descriptor: Int32) -> Data {
        var all = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                all.append(contentsOf: chunk[..<count])
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                return all
            }
        }
    }

    /// The path of the running executable, to start more of it.
    static var currentExecutable: String {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
        return URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
    }
}
