import ArgumentParser
import SocketIPC

/// `socket-ipc probe`: is a SocketIPC server there, does it serve this process, and what does it speak?
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell whether a SocketIPC server listens on a socket file, serves you, and which style it speaks.",
        discussion: """
            Connects and waits a moment without sending anything (a framed server sends its hello at once), then \
            half-closes (an empty EOF-style message) and reads what comes back. Prints `framed SocketIPC server \
            (protocol version N), peer pid=... uid=... gid=...` when the server sends the framed protocol's hello \
            and accepts this process, and `EOF-style server: ...` when it reads the empty message and closes (its \
            handler runs once, with 0 bytes); both exit 0. Exits 1 when nothing listens (no socket file, or a stale \
            one), when a framed server refuses this process or is going away, when the listener closes at once \
            without reading (refused, at its connection limit, or shutting down), when it sends something other \
            than a hello before it got a message, or when it sends nothing within --timeout.
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server to answer.", valueName: "seconds"))
    var timeout: Double = 2

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let result = try await Client.probe(path, timeout: duration(seconds: self.timeout))
        let peer = result.peer.map { ", peer \($0)" } ?? ""
        switch result.style {
        case .framed(let version):
            Output.line("framed SocketIPC server (protocol version \(version))\(peer)")
        case .endOfFile(let acknowledgementLength):
            Output.line(
                "EOF-style server: it read an empty message and closed with a \(acknowledgementLength)-byte "
                    + "acknowledgement, without a hello\(peer)"
            )
        case .framedRefused(let version, let reason, let message):
            let why =
                switch reason {
                case 0x04: "its authorization policy refused this process"
                case 0x00: "it is shutting down"
                default: "it sent going-away reason 0x\(String(reason, radix: 16))"
                }
            let text = message.isEmpty ? "" : " (\"\(message)\")"
            Output.error(
                "framed SocketIPC server (protocol version \(version)) on \(path), but it does not serve you: "
                    + "\(why)\(text)\(peer)"
            )
            throw ExitCode.failure
        case .closedAtOnce:
            Output.error(
                "something listens on \(path) but closed the connection at once, without reading: a SocketIPC "
                    + "server that refused this process, is at its connection limit or is shutting down, or another "
                    + "program\(peer)"
            )
            throw ExitCode.failure
        case .silent:
            Output.error("something listens on \(path) but sent nothing within \(self.timeout) s: not a SocketIPC server")
            throw ExitCode.failure
        case .otherProtocol:
            Output.error(
                "something listens on \(path) but does not speak SocketIPC: it sent bytes that are not a "
                    + "hello before it got any message (another program)\(peer)"
            )
            throw ExitCode.failure
        }
    }
}
