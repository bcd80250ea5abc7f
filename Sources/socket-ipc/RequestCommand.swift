import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc request`: framed requests on one connection, printing each reply.
struct RequestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "request",
        abstract: "Send framed requests and print the replies.",
        discussion: """
            Prints each reply as `reply: TEXT-OR-HEX`, in the order the replies arrive. With --count N the \
            requests are `MESSAGE #1` ... `MESSAGE #N`, with at most --concurrency of them in flight at once on \
            one connection.
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: "How many requests to send.")
    var count: Int = 1

    @Option(name: .long, help: "How many requests may be in flight at once.")
    var concurrency: Int = 1

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for each reply.", valueName: "seconds"))
    var timeout: Double = 10

    @Argument(help: "The request's text.")
    var message: String

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        guard self.count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard self.concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let count = self.count
        let message = self.message
        let timeout = duration(seconds: self.timeout)
        let workers = min(self.concurrency, count)
        var configuration = ClientConfiguration()
        configuration.connectTimeout = timeout
        try await Client.withConnection(to: path, configuration: configuration) { connection in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        // Worker w sends requests w, w + workers, w + 2 × workers, ...
                        for index in stride(from: worker, to: count, by: workers) {
                            let text = count == 1 ? message : "\(message) #\(index + 1)"
                            let reply = try await connection.request(ByteBuffer(string: text), timeout: timeout)
                            Output.line("reply: \(describe(reply))")
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}
