import ArgumentParser
import Foundation
import KeyValueService
import ServiceLifecycle
import SocketIPC
import UnixSignals

/// `kv-daemon --socket PATH`: serves a key-value store until SIGINT or SIGTERM.
@main
struct KVDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv-daemon",
        abstract: "Serve a key-value store on a Unix domain socket until interrupted.",
        discussion: "Prints `listening on PATH` once it accepts connections."
    )

    @Option(help: "The socket file to serve on (default: kv.sock in $XDG_RUNTIME_DIR).")
    var socket: String?

    @Option(
        name: .customLong("allow-uid"),
        help: ArgumentHelp(
            "Serve only processes of this user id (repeatable); default: this user's and root's.",
            valueName: "uid"
        )
    )
    var allowedUserIDs: [UInt32] = []

    func run() async throws {
        var configuration = ServerConfiguration(path: try KV.socketPath(self.socket))
        if !self.allowedUserIDs.isEmpty {
            configuration.authorization = .users(Set(self.allowedUserIDs))
        }
        let router = KV.router(store: Store())
        let logger = Logger(label: "kv-daemon")
        let server = Server.service(configuration: configuration, router: router, logger: logger) { path in
            try? FileHandle.standardOutput.write(contentsOf: Data("listening on \(path)\n".utf8))
        }
        let services = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await services.run()
    }
}
