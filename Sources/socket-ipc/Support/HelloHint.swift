import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// While a framed client waits for its server's hello, says once (as a note on standard error) that an EOF-style
/// server would never send one, so that a user who forgot `--eof` knows before the timeout.
///
/// A framed SocketIPC server sends its hello as soon as it accepts; an EOF-style server sends nothing until the
/// client half-closes. The note comes after ``delay`` and never once connected; only on a terminal, for the person
/// waiting (a script gets the error's own hint when the wait ends).
enum HelloHint {
    /// How long the client waits for a hello before the note: 1 s.
    static let delay: Duration = .seconds(1)

    /// Runs `connect`; if it has not reached its body (`connected` not called) within ``delay``, prints the note.
    static func whileConnecting<Result: Sendable>(
        to path: String,
        _ connect: (_ connected: @escaping @Sendable () -> Void) async throws -> Result
    ) async throws -> Result {
        guard isatty(STDERR_FILENO) == 1 else { return try await connect {} }
        let hint = Task {
            try await Task.sleep(for: Self.delay)
            Output.note(
                "note: no hello from \(path) after \(formatSeconds(Self.delay)) yet; if it is an EOF-style server, send to it with `socket-ipc send --eof`"
            )
        }
        defer { hint.cancel() }
        return try await connect { hint.cancel() }
    }
}
