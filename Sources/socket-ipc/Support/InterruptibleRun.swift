import ArgumentParser
import Foundation
import UnixSignals

/// A command's work in a temporary directory of its own (`demo`, `bench`), which SIGINT (Ctrl-C) or SIGTERM stops:
/// the work is cancelled (its servers shut down) and the directory removed, instead of the process being killed with
/// its socket files left behind (found by reviews, of `demo` and then of `bench`).
enum InterruptibleRun {
    /// Runs `body` in a fresh directory (``DemoCommand/makeTemporaryDirectory()``), removed afterwards. The signals
    /// are trapped before anything is made.
    /// - Parameters:
    ///   - stopping: What the cancellation of `body` stops, for the line that reports a signal.
    ///   - body: The work, given the directory; ends early when its task is cancelled.
    /// - Throws: What `body` throws; after a signal, `ExitCode` 128 plus the signal's number, as a shell reports a
    ///   process it killed, once the line `interrupted by SIGINT: ... and DIR is removed` is printed.
    static func inTemporaryDirectory(
        stopping: String,
        _ body: @escaping @Sendable (String) async throws -> Void
    ) async throws {
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let directory = try DemoCommand.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        enum Ended: Sendable {
            case work(Result<Void, any Error>)
            case signal(UnixSignal?)
        }
        var outcome: Result<Void, any Error> = .success(())
        var interrupted: UnixSignal?
        await withTaskGroup(of: Ended.self) { group in
            group.addTask {
                do {
                    try await body(directory)
                    return .work(.success(()))
                } catch {
                    return .work(.failure(error))
                }
            }
            group.addTask {
                var signals = signals.makeAsyncIterator()
                let first = await signals.next()
                // A second signal while the work stops (a shutdown that hangs) ends the process at once, with the
                // directory removed first, as a second Ctrl-C ends serve.
                if first != nil {
                    Task {
                        guard let second = await signals.next() else { return }
                        try? FileManager.default.removeItem(atPath: directory)
                        _exit(128 + second.rawValue)
                    }
                }
                return .signal(first)
            }
            while let ended = await group.next() {
                switch ended {
                case .work(let result): outcome = result
                case .signal(let signal): interrupted = interrupted ?? signal
                }
                // The work ended, or a signal came: the other task stops.
                group.cancelAll()
            }
        }
        if let signal = interrupted {
            Output.error("interrupted by \(signal): \(stopping) and \(directory) is removed")
            throw ExitCode(128 + signal.rawValue)
        }
        try outcome.get()
    }
}
