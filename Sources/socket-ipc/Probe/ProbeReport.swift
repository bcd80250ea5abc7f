import ArgumentParser
import SocketIPC

/// What `socket-ipc probe` reports about a socket path: a verdict with its one-line explanation and fix, what the file
/// system says (``SocketFileInspection``), and what a connection told (the server's protocol version, its going-away
/// reason, its credentials).
///
/// ``Diagnosis`` builds one from the file system alone to explain a client's failed connect in the same words.
struct ProbeReport: Sendable {
    /// The going-away frame a framed server sent instead of serving this process.
    struct GoAway: Sendable {
        /// The reason byte (`0x04`: its authorization policy refused this process; `0x00`: it is shutting down).
        var reason: UInt8
        /// The text that came with it.
        var message: String
    }

    /// What was found.
    var verdict: ProbeVerdict
    /// What was found, in one sentence that names the path.
    var headline: String
    /// What to do about it, if there is something to do.
    var fix: String?
    /// What the file system says.
    var inspection: SocketFileInspection
    /// The protocol version a framed server's hello names.
    var protocolVersion: UInt8? = nil
    /// The going-away frame of a framed server that does not serve this process.
    var goAway: GoAway? = nil
    /// The server's (or the other program's) process credentials, when a connection was made.
    var peer: PeerCredentials? = nil

    /// The verdict line: the headline, then the fix after a colon.
    var line: String {
        self.fix.map { "\(self.headline): \($0)" } ?? self.headline
    }

    /// The exit status of `probe`.
    var exitStatus: Int32 { self.verdict.exitStatus.rawValue }
}

/// `2`, `0.5`: seconds as the command line took them, without a needless `.0`.
func formatSeconds(_ seconds: Double) -> String {
    seconds == seconds.rounded() && abs(seconds) < 1e15 ? String(Int64(seconds)) : String(seconds)
}
