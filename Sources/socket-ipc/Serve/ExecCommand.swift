import Foundation
import NIOCore
import SocketIPC

/// The command of `serve --exec`: run once per message with the message on its standard input; its standard output
/// is the reply.
///
/// The command runs as `/bin/sh -c COMMAND` with the server's environment and, as D. J. Bernstein's UCSPI tools for
/// Unix sockets (`unixserver` of ucspi-unix) set them:
///
/// | variable | value |
/// | --- | --- |
/// | `PROTO` | `UNIX` |
/// | `UNIXLOCALPATH` | the socket path |
/// | `UNIXLOCALPID`, `UNIXLOCALUID`, `UNIXLOCALGID` | the server's pid, uid and gid |
/// | `UNIXREMOTEPID`, `UNIXREMOTEEUID`, `UNIXREMOTEEGID` | the peer's pid, effective uid and gid (`SO_PEERCRED`); unset when unknown |
///
/// and `SOCKETIPC_KIND`: `request`, `message` or `eof`.
///
/// Each run first waits for its turn (``turns``): at most so many runs at once across the server. ``timeout`` counts
/// from the start of the run, not from the message's arrival; the wait ends early when the waiting task is cancelled
/// (its connection closed, or the server's shutdown ended its grace period).
struct ExecCommand: Sendable {
    /// The shell command.
    let command: String
    /// How long one run may take before it is killed.
    let timeout: Duration
    /// The most bytes of standard output a reply may take: the server's maximum message size.
    let maximumOutput: Int
    /// The server's socket path, for `UNIXLOCALPATH`.
    let socketPath: String
    /// The turns to run, shared by every run of the server.
    let turns: ExecTurns

    /// The most bytes of standard error an error reply carries.
    static let maximumErrorText = 4096

    /// Runs the command with `input` on its standard input.
    /// - Parameters:
    ///   - input: The message.
    ///   - peer: Who sent it, for the environment.
    ///   - kind: What carried it, for `SOCKETIPC_KIND`.
    ///   - keepsOutput: Whether the output is wanted (a one-way message's is not).
    ///   - mayStart: Called once the run has its turn, right before the command starts; `false` gives the turn back
    ///     and throws `CancellationError` instead of starting it.
    /// - Returns: The command's standard output.
    /// - Throws: ``ExecFailure`` when the command exits with a non-zero status, is killed, writes more than
    ///   ``maximumOutput`` bytes, outlasts ``timeout`` or cannot be started; `CancellationError` when the task is
    ///   cancelled while it waits for its turn, or `mayStart` says no.
    func run(
        _ input: ByteBuffer,
        peer: PeerCredentials?,
        kind: ReceivedMessage.Kind,
        keepsOutput: Bool = true,
        mayStart: @Sendable () -> Bool = { true }
    ) async throws -> ByteBuffer {
        try await self.turns.acquire(user: peer?.userID)
        defer { self.turns.release(user: peer?.userID) }
        guard !Task.isCancelled, mayStart() else { throw CancellationError() }
        let limits = ExecProcess.Limits(
            maximumOutput: self.maximumOutput,
            maximumErrorOutput: Self.maximumErrorText,
            timeout: self.timeout,
            keepsOutput: keepsOutput
        )
        let outcome: ExecProcess.Outcome
        do {
            outcome = try await ExecProcess.run(
                command: self.command,
                environment: self.environment(peer: peer, kind: kind),
                input: Array(input.readableBytesView),
                limits: limits
            )
        } catch {
            throw ExecFailure(message: "\(error)")
        }
        switch outcome.stop {
        case .outputTooLarge:
            throw ExecFailure(
                message:
                    "the command wrote more than the maximum message size of \(self.maximumOutput) bytes; it was killed"
            )
        case .timedOut:
            throw ExecFailure(message: "the command did not finish within \(self.timeout); it was killed")
        case .cancelled:
            throw CancellationError()
        case nil:
            break
        }
        let stderr = Self.errorText(outcome)
        switch outcome.termination {
        case .exited(0):
            return ByteBuffer(bytes: outcome.output)
        case .exited(let status):
            throw ExecFailure(message: "exit status \(status)" + (stderr.isEmpty ? "" : ": \(stderr)"))
        case .signalled(let signal):
            throw ExecFailure(message: "killed by signal \(signal)" + (stderr.isEmpty ? "" : ": \(stderr)"))
        case .unknown(let code):
            throw ExecFailure(
                message: "could not learn how the command ended: waitpid failed: \(String(cString: strerror(code)))"
            )
        }
    }

    /// The server's environment with the UCSPI variables of `peer` and `SOCKETIPC_KIND`, as `NAME=value` entries.
    func environment(peer: PeerCredentials?, kind: ReceivedMessage.Kind) -> [String] {
        var environment = ProcessInfo.processInfo.environment
        for name in ["UNIXREMOTEPID", "UNIXREMOTEEUID", "UNIXREMOTEEGID"] { environment[name] = nil }
        environment["PROTO"] = "UNIX"
        environment["UNIXLOCALPATH"] = self.socketPath
        environment["UNIXLOCALPID"] = "\(getpid())"
        environment["UNIXLOCALUID"] = "\(geteuid())"
        environment["UNIXLOCALGID"] = "\(getegid())"
        if let peer {
            environment["UNIXREMOTEPID"] = "\(peer.processID)"
            environment["UNIXREMOTEEUID"] = "\(peer.userID)"
            environment["UNIXREMOTEEGID"] = "\(peer.groupID)"
        }
        environment["SOCKETIPC_KIND"] = kind.rawValue
        return environment.map { "\($0.key)=\($0.value)" }
    }

    /// The command's standard error as one safe text: escaped, trimmed, `…` when cut at ``maximumErrorText``.
    private static func errorText(_ outcome: ExecProcess.Outcome) -> String {
        let text = SafeText.escape(String(decoding: outcome.errorOutput, as: UTF8.self))
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return outcome.errorOutputTruncated ? text + "…" : text
    }
}

/// Why `serve --exec` could not reply with the command's output; the requester gets ``message`` as the error reply's
/// text.
struct ExecFailure: Error, CustomStringConvertible {
    /// What went wrong, with the command's standard error where it wrote one.
    var message: String

    /// The message.
    var description: String { self.message }
}
