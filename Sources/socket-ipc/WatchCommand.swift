import ArgumentParser
import SocketIPC
import UnixSignals

/// `socket-ipc watch`: a server-streaming call of a service method by name, printing each response as a JSON line.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Call a server-streaming method with a JSON request and print each response as a JSON line.",
        discussion: """
            Calls METHOD on the server with JSON as its request and prints each response on one line as it comes, \
            until the server ends the stream (exit 0) or SIGINT or SIGTERM (exit 0: the call is cancelled on the \
            server and the connection closed). The request is read as `call` reads it. The watch ends when its \
            connection is lost (exit 3): it does not reconnect. Responses are printed as `call` prints them: a \
            response that is not JSON ends the watch (exit 1).

            Examples, against `socket-ipc serve app.sock`, which serves a small demo service:

              socket-ipc watch app.sock demo.count 5        # 0 to 4, then exits
              socket-ipc watch app.sock demo.counter '{}'   # 0, then until ^C:
              socket-ipc call app.sock demo.increment 1     # the watch prints 1

            \(ExitStatus.help)
            """
    )

    @OptionGroup
    var call: CallArguments

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func run() async throws {
        self.output.apply()
        // A quiet stream piped to `head -1` ends when head does, not at its next event.
        Output.watchForReaderGone()
        let call = self.call
        let request = try await call.loadRequest()
        // Trapped before connecting: once a response is printed, SIGINT ends the watch cleanly.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await call.withConnection { connection, timeout in
                    // A reader of standard output that stops reading holds a line's write, on the connection's event
                    // loop, where the call's deadline would have fired (found by a review: `| (sleep 30)` held a
                    // `--timeout 5` for 30 s): the write waits only until the deadline.
                    let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
                    try await connection.serverStreaming(method: call.method, request: request, timeout: timeout) {
                        try Output.line(try formatJSON($0, pretty: false), by: deadline)
                    }
                }
            }
            group.addTask {
                var signals = signals.makeAsyncIterator()
                if await signals.next() != nil { ForcedExit.arm() }
            }
            // The stream ended or failed, or a signal came: either way the other task is cancelled (a stream
            // cancelled so is cancelled on the server too), and its error, if any, is not reported.
            try await group.next()
            group.cancelAll()
        }
    }
}
