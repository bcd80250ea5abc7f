import Foundation
import Testing

/// Waits until the file at `path` has at least `count` lines; the condition, not a time, ends the wait, and 1000
/// polls are a safety net.
func waitUntilFile(_ path: String, hasLines count: Int) async throws {
    for _ in 0..<1000 {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        if text.split(separator: "\n").count >= count { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("\(path) never had \(count) lines")
}
