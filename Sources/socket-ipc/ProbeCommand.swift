import ArgumentParser
import SocketIPC

/// `socket-ipc probe`: is a server there, and what does it speak?
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell whether a server listens on a socket file and which of SocketIPC's styles it speaks.",
        discussion: """
            Connects, half-closes at once (an empty EOF-style message) and reads what comes back, without sending \
            anything else. Prints `framed SocketIPC server (protocol version N), peer pid=... uid=... gid=...` \
            when the server sends the framed protocol's hello, and `EOF-style server: ...` when it reads the empty \
            message and closes (its handler runs once, with 0 bytes); both exit 0. Exits 1 when nothing listens \
            (no socket file, or a stale one), or when the peer sends something else or nothing within --timeout.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The socket file's path.", valueName: "path"))
    var socket: String

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server to answer.", valueName: "seconds"))
    var timeout: Double = 2

    func validate() throws {
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let result = try await Client.probe(self.socket, timeout: duration(seconds: self.timeout))
        let peer = result.peer.map { ", peer \($0)" } ?? ""
        switch result.style {
        case .framed(let version):
            Output.line("framed SocketIPC server (protocol version \(version))\(peer)")
        case .endOfFile(let acknowledgementLength):
            Output.line(
                "EOF-style server: it read an empty message and closed with a \(acknowledgementLength)-byte "
                    + "acknowledgement, without a hello\(peer)"
            )
        case .silent:
            Output.error("something listens on \(self.socket) but sent nothing within \(self.timeout) s: not a SocketIPC server")
            throw ExitCode.failure
        case .otherProtocol:
            Output.error("something listens on \(self.socket) but does not speak SocketIPC: it sent bytes that are not a hello")
            throw ExitCode.failure
        }
    }
}
