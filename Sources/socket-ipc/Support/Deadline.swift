import SocketIPC

/// Runs `body`, failing with `timedOut` if it has not finished within `timeout`: the whole-command deadline of
/// `send --timeout`. `body` is cancelled when the deadline passes (a cancelled send closes its connection).
/// - Parameters:
///   - timeout: How long `body` may take; `nil` for no deadline.
///   - what: What did not finish, for the error: "the message to PATH was not acknowledged".
/// - Throws: ``SocketIPCError`` with code `timedOut`, or what `body` throws.
///   - onExpiry: Called as the deadline passes, before `body` is cancelled: what `body` was doing then.
func withDeadline<Result: Sendable>(
    _ timeout: Duration?,
    _ what: @autoclosure () -> String,
    onExpiry: (@Sendable () -> Void)? = nil,
    _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
    guard let timeout else { return try await body() }
    let description = what()
    return try await withThrowingTaskGroup(of: Result?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            onExpiry?()
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let result = first else {
            throw SocketIPCError(.timedOut, "\(description) within \(formatSeconds(timeout)) (--timeout)")
        }
        return result
    }
}

/// `1.5 s`, `250 ms`: a duration for a message.
func formatSeconds(_ duration: Duration) -> String {
    let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    if seconds < 1 { return "\(Int((seconds * 1000).rounded())) ms" }
    return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
}
