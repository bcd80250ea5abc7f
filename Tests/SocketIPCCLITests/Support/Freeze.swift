import Foundation
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Sends SIGSTOP to `process` and waits until every thread of it has stopped (state `T` in
/// `/proc/PID/task/*/stat`, on Linux; elsewhere it only sends the signal): `kill` returns before the threads stop, and
/// one that is still running could answer what the test sends next. 1000 polls are a safety net.
func freeze(_ process: TestProcess) async throws {
    process.signal(SIGSTOP)
    #if os(Linux)
        let tasks = "/proc/\(process.processID)/task"
        for _ in 0..<1000 {
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
            let states = threads.map { thread -> Character? in
                guard let stat = try? String(contentsOfFile: "\(tasks)/\(thread)/stat", encoding: .utf8),
                    let end = stat.lastIndex(of: ")")
                else { return nil }
                // `PID (COMMAND) STATE ...`: the command may hold spaces and parentheses, so read after the last `)`.
                return stat[stat.index(after: end)...].first { $0 != " " }
            }
            if !states.isEmpty, states.allSatisfy({ $0 == "T" }) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("process \(process.processID) did not stop")
    #endif
}
