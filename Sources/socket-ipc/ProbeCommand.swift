import ArgumentParser
import SocketIPC

/// `socket-ipc probe`: is a server there, and what does it speak?
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell whether a server listens on a socket file and whether it speaks SocketIPC's framed protocol.",
        discussion: """
            Connects and waits for the framed protocol's hello. Prints `framed SocketIPC server (protocol \
            version 1), peer pid=... uid=... gid=...` and exits 0 when one answers. Exits 1 when nothing listens \
            (no socket file, or a stale one), when the peer sends something else, or when it sends nothing within \
            --timeout (an EOF-style server waits for its client to speak first).
            """
    )

    @Option(name: .long, help: ArgumentHelp("The socket file's path.", valueName: "path"))
    var socket: String

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server's hello.", valueName: "seconds"))
    var timeout: Double = 2

    func validate() throws {
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        var configuration = ClientConfiguration()
        configuration.connectTimeout = duration(seconds: self.timeout)
        let connection: Connection
        do {
            connection = try await Client.connect(to: self.socket, configuration: configuration)
        } catch let error as SocketIPCError where error.code == .timedOut {
            Output.error(
                "something listens on \(self.socket) but sent no SocketIPC hello within \(self.timeout) s: "
                    + "an EOF-style server, or another protocol"
            )
            throw ExitCode.failure
        } catch let error as SocketIPCError where error.code == .notSocketIPCPeer {
            Output.error("something listens on \(self.socket) but does not speak SocketIPC: \(error.message)")
            throw ExitCode.failure
        }
        // The handshake succeeded, so the server speaks the only version this build knows.
        let peer = connection.peer.map { ", peer \($0)" } ?? ""
        Output.line("framed SocketIPC server (protocol version 1)\(peer)")
        connection.close()
        await connection.waitUntilClosed()
    }
}
