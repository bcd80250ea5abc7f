import ArgumentParser
import SocketIPC

/// `socket-ipc call`: one unary call of a service method by name, with a JSON request, printing the JSON response.
struct CallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call a service method with a JSON request and print its JSON response.",
        discussion: """
            Calls METHOD on the server with JSON as its request, as the server's JSON codec reads it, and prints \
            the response on standard output: as it came, or indented with --pretty; characters that could act on \
            a terminal are written as JSON escapes, and a response that is not JSON is an error (exit 1). The \
            request is checked to be \
            JSON first (a top-level string, number, true, false or null is JSON too). A request that starts with \
            a '-' (a negative number) goes after `--`.

            Examples, against `socket-ipc serve app.sock`, which serves a small demo service:

              socket-ipc call app.sock demo.echo '{"hello": "world"}'
              echo '[1, 2, 3]' | socket-ipc call app.sock --pretty demo.echo
              socket-ipc call app.sock demo.increment @amount.json
              socket-ipc call app.sock --timeout 0.5 demo.sleep 10     # exits 5

            \(ExitStatus.help)
            """
    )

    @OptionGroup
    var call: CallArguments

    @Flag(name: .long, help: "Print the response indented, its keys in the order the server sent them.")
    var pretty = false

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func run() async throws {
        self.output.apply()
        let call = self.call
        let pretty = self.pretty
        let request = try await call.loadRequest()
        var deadline: ContinuousClock.Instant?
        let response = try await call.withConnection { connection, timeout in
            deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
            return try await connection.call(method: call.method, request: request, timeout: timeout)
        }
        // --timeout covers printing too, as watch's: standard output that nobody reads holds no call for good.
        try Output.line(try formatJSON(response, pretty: pretty), by: deadline)
    }
}
