import ArgumentParser
import Logging
import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `socket-ipc`: serve, send, request, call, watch, probe and demonstrate SocketIPC from the command line.
///
/// Every subcommand lives in a file of its own. A ``SocketIPCError`` (or a ``UsageError``, a ``CommandFailure``, a
/// service's application error) that a subcommand throws is printed in one line on standard error, and the process
/// exits with the status of ``ExitStatus``'s table; any other error is reported by ArgumentParser as usual.
@main
struct SocketIPCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket-ipc",
        abstract: "Fast, safe messaging between processes over Unix domain sockets.",
        discussion: """
            Framed servers speak SocketIPC's protocol (PROTOCOL.md): one-way messages and requests with replies, \
            many per connection. EOF-style servers take one message per connection, ended by the client's \
            half-close, so `printf hi | socat - UNIX-CONNECT:PATH` and `printf hi | nc -N -U PATH` are clients too.

            `serve` is a server to try things on (an echo, or --exec CMD to answer with a command's output); \
            `listen` prints every message that arrives, of a server's clients or (--connect) pushed by a server.

            Services are typed methods over framed connections: `call` and `watch` call them by name with JSON \
            requests, and `serve` serves a small demo service to try them on.

            Try `socket-ipc demo` to see both kinds of server with client processes talking to them, and a typed \
            service whose client rides out a server restart.

            Every subcommand takes the socket as its first argument: a path, a bare name in $XDG_RUNTIME_DIR, or \
            @name (Linux's abstract namespace). Results go to standard output, diagnostics to standard error; \
            --quiet and --verbose say less or more; colour only on a terminal, never with NO_COLOR. Shell \
            completions: `socket-ipc --generate-completion-script bash` (or zsh, fish).

            \(ExitStatus.help)
            """,
        subcommands: [
            ServeCommand.self,
            ListenCommand.self,
            SendCommand.self,
            RequestCommand.self,
            CallCommand.self,
            WatchCommand.self,
            ProbeCommand.self,
            BenchCommand.self,
            DemoCommand.self,
        ]
    )

    /// Parses the command line and runs the chosen subcommand; a failure is reported in one line on standard error
    /// and ends the process with the status of ``ExitStatus``'s table.
    static func main() async {
        // Before any descriptor is opened: /dev/null where standard input, output or error is closed.
        ProcessStart.prepare()
        // A closed standard error fails the write instead of killing the process, and sockets never raise SIGPIPE
        // anyway (the library sends with MSG_NOSIGNAL); a closed standard output ends the command as SIGPIPE would,
        // but for serve (Output.standardOutputClosed()).
        signal(SIGPIPE, SIG_IGN)
        // The library's log lines go where the command's own go, and as they go (queued in a server).
        LoggingSystem.bootstrap { OutputLogHandler(label: $0) }
        do {
            try Self.checkArgumentsAreUTF8()
            let arguments = Self.movingSocketOption(in: Array(CommandLine.arguments.dropFirst()))
            var command = try await Self.asyncParseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            Output.finish()
        } catch {
            let status = ExitStatus.report(error)
            Output.finish()
            if let status {
                Self.exit(withError: status)
            }
            Self.exit(withError: error)
        }
    }

    /// Refuses an argument that is not valid UTF-8: Swift's `CommandLine.arguments` replaces each invalid byte with
    /// U+FFFD, so a path such as `a\xFFb.sock` would name another file (made, or looked for, under the altered name)
    /// and a message would be sent altered, both silently.
    /// - Throws: ``UsageError`` naming the argument.
    static func checkArgumentsAreUTF8() throws {
        for index in 1..<Int(CommandLine.argc) {
            guard let raw = CommandLine.unsafeArgv[index] else { continue }
            let bytes = UnsafeBufferPointer(start: raw, count: strlen(raw)).map { UInt8(bitPattern: $0) }
            guard String(validating: bytes, as: UTF8.self) == nil else { continue }
            throw UsageError(
                message: "argument \(index) is not valid UTF-8, and would be read altered: give paths in UTF-8, "
                    + "and binary messages as @FILE or on standard input"
            )
        }
    }

    /// The arguments with `--socket PATH` (or `--socket=PATH`), the spelling of earlier versions, turned into the
    /// positional PATH that every subcommand now takes first: `send --socket app.sock hi` is `send app.sock hi`.
    /// Arguments after `--` are left as they are.
    static func movingSocketOption(in arguments: [String]) -> [String] {
        guard let subcommand = arguments.firstIndex(where: { !$0.hasPrefix("-") }) else { return arguments }
        var rest = Array(arguments[(subcommand + 1)...])
        let end = rest.firstIndex(of: "--") ?? rest.endIndex
        guard let index = rest[..<end].firstIndex(where: { $0 == "--socket" || $0.hasPrefix("--socket=") }) else {
            return arguments
        }
        let path: String
        if rest[index] == "--socket" {
            guard index + 1 < end else { return arguments }  // ArgumentParser reports the missing value.
            path = rest[index + 1]
            rest.removeSubrange(index...(index + 1))
        } else {
            path = String(rest[index].dropFirst("--socket=".count))
            rest.remove(at: index)
        }
        return Array(arguments[...subcommand]) + [path] + rest
    }
}
