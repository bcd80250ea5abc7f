import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc request`: framed requests on one connection, printing the reply, or a latency summary of many.
struct RequestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "request",
        abstract: "Send a framed request and print the reply; or fire many and print a latency summary.",
        discussion: """
            Sends MESSAGE (the argument, @FILE, or standard input when omitted or -) as one request and prints the \
            reply as `reply: TEXT-OR-HEX` (text in quotes when it is printable UTF-8, on one line: newlines and \
            controls escaped as \\n and \\xNN, at most its first 1 KiB), or with --raw the reply's bytes as they are.

            With --count N it sends N requests, `MESSAGE #1` ... `MESSAGE #N`, with at most --concurrency of them \
            in flight at once on one connection, and prints a summary: how many, how long, the rate, and the \
            round-trip latency's percentiles (nearest rank) in microseconds. --verbose also prints each reply on \
            standard error.

            With --json: one JSON object, {"reply":TEXT,"encoding":"utf8","size":N} (base64 for replies that are \
            not UTF-8), or for --count {"count":N,"concurrency":C,"seconds":S,"requestsPerSecond":R, \
            "latencyMicroseconds":{"min":..,"p50":..,"p90":..,"p99":..,"max":..}}.

            Examples:

              socket-ipc request /tmp/app.sock hello
              socket-ipc request --timeout 2 /tmp/app.sock @query.bin
              socket-ipc request --count 10000 --concurrency 16 /tmp/app.sock ping
              socket-ipc request --json /tmp/app.sock hello | jq -r .reply

            \(ExitStatus.help)
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: "How many requests to send.")
    var count: Int = 1

    @Option(name: .long, help: "How many requests may be in flight at once.")
    var concurrency: Int = 1

    @Option(
        name: .long,
        help: ArgumentHelp("Seconds to wait for the connection, for each reply and for standard output to take it (default 10).", valueName: "seconds")
    )
    var timeout: Double = 10

    @Flag(name: .long, help: "Print the reply's bytes as they are, without `reply: ` or quotes.")
    var raw = false

    @Flag(name: .long, help: "Print the result as one JSON object.")
    var json = false

    @Argument(help: "The request; @FILE reads it from a file; standard input when omitted or -.")
    var message: String?

    @OptionGroup(title: "Server's user")
    var trust: ServerTrustOptions

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        guard self.count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard self.concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard !(self.raw && self.json) else { throw ValidationError("--raw and --json exclude each other") }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let message = try await MessageSource(argument: self.message).readAll()
        let timeout = duration(seconds: self.timeout)
        var configuration = ClientConfiguration()
        configuration.connectTimeout = timeout
        configuration.trustedServerUserIDs = self.trust.trustedServerUserIDs
        try await HelloHint.whileConnecting(to: path) { connected in
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                connected()
                if self.count == 1 {
                    let reply = try await connection.request(message, timeout: timeout)
                    // Printing waits for standard output no longer than for the reply.
                    try self.print(reply: reply, by: .now.advanced(by: timeout))
                } else {
                    let summary = try await Self.fire(
                        count: self.count,
                        concurrency: self.concurrency,
                        message: message,
                        timeout: timeout,
                        on: connection
                    )
                    let deadline = ContinuousClock.now.advanced(by: timeout)
                    if self.json {
                        try Output.json(summary.json, by: deadline)
                    } else {
                        try Output.line(summary.text, by: deadline)
                    }
                }
            }
        }
    }

    /// Prints one reply as the flags say, waiting for standard output until `deadline` at most.
    /// - Throws: `SocketIPCError` with code `timedOut` when standard output took nothing more until `deadline`.
    private func print(reply: ByteBuffer, by deadline: ContinuousClock.Instant) throws {
        if self.json {
            try Output.json(payloadJSON(reply).mapKeys { $0 == "payload" ? "reply" : $0 }, by: deadline)
        } else if self.raw {
            try Output.raw(reply, by: deadline)
        } else {
            try Output.line("reply: \(describe(reply))", by: deadline)
        }
    }

    /// Sends `count` requests, `MESSAGE #1` ... `MESSAGE #count`, at most `concurrency` at once, timing each.
    /// - Throws: The first request's error: the others are then cancelled.
    static func fire(
        count: Int,
        concurrency: Int,
        message: ByteBuffer,
        timeout: Duration,
        on connection: Connection
    ) async throws -> LatencySummary {
        let workers = min(concurrency, count)
        let clock = ContinuousClock()
        let start = clock.now
        let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
            for worker in 0..<workers {
                group.addTask {
                    // Worker w sends requests w, w + workers, w + 2 × workers, ...
                    var latencies: [Duration] = []
                    for index in stride(from: worker, to: count, by: workers) {
                        var request = message
                        request.writeString(" #\(index + 1)")
                        let sent = clock.now
                        let reply = try await connection.request(request, timeout: timeout)
                        latencies.append(clock.now - sent)
                        Output.detail("reply: \(describe(reply))")
                    }
                    return latencies
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        return LatencySummary(latencies: latencies, elapsed: clock.now - start, concurrency: workers)
    }
}

extension Dictionary where Key == String {
    /// The dictionary with each key replaced by `transform(key)`.
    fileprivate func mapKeys(_ transform: (String) -> String) -> [String: Value] {
        Dictionary(uniqueKeysWithValues: self.map { (transform($0.key), $0.value) })
    }
}
