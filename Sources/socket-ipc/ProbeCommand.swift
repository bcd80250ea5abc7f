import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc probe`: is anyone there, and what does it speak?
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell whether a server listens on a socket file and whether it speaks SocketIPC's framed protocol.",
        discussion: "Exits 0 when a framed SocketIPC server answered, 1 otherwise."
    )

    @Option(name: .long, help: "The socket file's path.")
    var socket: String

    @Option(name: .long, help: "Seconds to wait for the server's hello.")
    var timeout: Double = 2

    func run() async throws {
        var configuration = ClientConfiguration()
        configuration.connectTimeout = .milliseconds(Int64(self.timeout * 1000))
        do {
            let connection = try await Client.connect(to: self.socket, configuration: configuration)
            let peer = connection.peer.map { ", peer \($0)" } ?? ""
            Output.line("framed SocketIPC server (protocol version 1) on \(self.socket)\(peer)")
            connection.close()
            await connection.waitUntilClosed()
        } catch let error as SocketIPCError where error.code == .timedOut {
            Output.line("something listens on \(self.socket) but sent no SocketIPC hello: an EOF-style server, or another protocol")
            throw ExitCode.failure
        } catch let error as SocketIPCError {
            Output.error(error.message)
            throw ExitCode.failure
        }
    }
}
