import Foundation

/// The resident set size of `process` in kB (`VmRSS` of `/proc/PID/status`); `nil` where there is no such file
/// (not Linux, or the process is gone).
func residentKilobytes(of process: pid_t) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(process)/status", encoding: .utf8) else { return nil }
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
    return line?.split(whereSeparator: \.isWhitespace).dropFirst().first.flatMap { Int($0) }
}
