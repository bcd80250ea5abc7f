import Foundation

/// The command name of a process, as `ps -o comm` shows it: `/proc/PID/comm` on Linux (Darwin: none, untested).
enum ProcessName {
    /// The command name of process `pid`, or `nil` when it is gone or cannot be read.
    static func of(_ pid: Int32) -> String? {
        #if os(Linux)
        guard pid > 0, let data = FileManager.default.contents(atPath: "/proc/\(pid)/comm") else { return nil }
        let name = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return name.isEmpty ? nil : name
        #else
        return nil
        #endif
    }

    /// `1234 (socket-ipc)`, or `1234` when the name cannot be read.
    static func describe(_ pid: Int32) -> String {
        Self.of(pid).map { "\(pid) (\($0))" } ?? "\(pid)"
    }
}
