import ArgumentParser

/// `socket-ipc`: serve, send, request, probe, benchmark and demonstrate SocketIPC from the command line.
@main
struct SocketIPCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-ipc",
        abstract: "Fast, safe messaging between processes over Unix domain sockets.",
        discussion: """
            Framed servers speak SocketIPC's protocol (PROTOCOL.md); EOF-style servers take one message per \
            connection, ended by the client's half-close, so `printf hi | socat - UNIX-CONNECT:PATH` works.
            """,
        subcommands: [
            ServeCommand.self, SendCommand.self, RequestCommand.self, ProbeCommand.self, BenchCommand.self,
            DemoCommand.self, ListenForPushCommand.self,
        ]
    )
}
