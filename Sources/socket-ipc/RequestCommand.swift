import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc request`: framed requests, printing each reply.
struct RequestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "request",
        abstract: "Send framed requests and print the replies.",
        discussion: "With --count and --concurrency, requests run concurrently on one connection."
    )

    @Option(name: .long, help: "The server's socket path.")
    var socket: String

    @Option(name: .long, help: "How many requests to send.")
    var count: Int = 1

    @Option(name: .long, help: "How many requests may be in flight at once.")
    var concurrency: Int = 1

    @Option(name: .long, help: "Seconds to wait for each reply.")
    var timeout: Double = 10

    @Argument(help: "The request's text.")
    var message: String

    func validate() throws {
        guard self.count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard self.concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let count = self.count
        let message = self.message
        let timeout = Duration.milliseconds(Int64(self.timeout * 1000))
        let workers = min(self.concurrency, count)
        try await reportingErrors {
            try await Client.withConnection(to: self.socket) { connection in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for worker in 0..<workers {
                        group.addTask {
                            // Worker w sends requests w, w + workers, w + 2 × workers, …
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
}
