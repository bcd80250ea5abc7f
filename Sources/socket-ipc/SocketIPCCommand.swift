import ArgumentParser
import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `socket-ipc`: serve, send, request, call, watch, probe and demonstrate SocketIPC from the command line.
///
/// Every subcommand lives in a file of its own. A ``SocketIPCError`` that a subcommand throws is printed as
/// `error: <message>` on standard error and the process exits with status 1 (`call` and `watch` tell failures apart
/// with statuses of their own: ``CallExitStatus``); any other error is reported by ArgumentParser as usual.
@main
struct SocketIPCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-ipc",
        abstract: "Fast, safe messaging between processes over Unix domain sockets.",
        discussion: """
            Framed servers speak SocketIPC's protocol (PROTOCOL.md): one-way messages and requests with replies, \
            many per connection. EOF-style servers take one message per connection, ended by the client's \
            half-close, so `printf hi | socat - UNIX-CONNECT:PATH` and `printf hi | nc -N -U PATH` are clients too.

            Services are typed methods over framed connections: `call` and `watch` call them by name with JSON \
            requests, and `serve` serves a small demo service to try them on.

            Try `socket-ipc demo` to see both kinds of server with client processes talking to them, and a typed \
            service whose client rides out a server restart.
            """,
        subcommands: [
            ServeCommand.self,
            SendCommand.self,
            RequestCommand.self,
            CallCommand.self,
            WatchCommand.self,
            ProbeCommand.self,
            BenchCommand.self,
            DemoCommand.self,
            ListenForPushCommand.self,
        ]
    )

    /// Parses the command line and runs the chosen subcommand, reporting a ``SocketIPCError`` as one line.
    static func main() async {
        // A closed standard output or error (`socket-ipc listen | head`) fails the write instead of killing the
        // process; sockets never raise SIGPIPE anyway (the library sends with MSG_NOSIGNAL).
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try await Self.asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as SocketIPCError {
            Output.error(error.message)
            Self.exit(withError: ExitCode.failure)
        } catch {
            Self.exit(withError: error)
        }
    }
}
