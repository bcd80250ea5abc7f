import Foundation

/// The command name of a process, as `ps -o comm` shows it: `/proc/PID/comm` on Linux (Darwin: none, untested).
enum ProcessName {
    /// The command name of process `pid`, safe to print (``SafeText/oneLine(_:)``: a process names itself, with
    /// `prctl(PR_SET_NAME)`, and may put escape sequences or a newline in its name), or `nil` when it is gone or cannot
    /// be read.
    static func of(_ pid: Int32) -> String? {
        Self.unescaped(pid).map(SafeText.oneLine)
    }

    /// The command name of process `pid` as the process set it, not escaped: for JSON, whose own escaping makes any
    /// name safe (escaping it for text first would print `\u001b` as `\\x1b`, another name); `nil` as ``of(_:)``.
    static func unescaped(_ pid: Int32) -> String? {
        #if os(Linux)
        guard pid > 0, let data = FileManager.default.contents(atPath: "/proc/\(pid)/comm") else { return nil }
        // The kernel ends the name with a newline.
        let bytes = data.last == UInt8(ascii: "\n") ? data.dropLast() : data[...]
        let name = String(decoding: bytes, as: UTF8.self)
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
