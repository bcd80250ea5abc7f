import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc listen-for-push`: connects and waits for the server to push one message (used by `demo`).
struct ListenForPushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "listen-for-push",
        abstract: "Connect and print the first message the server pushes.",
        shouldDisplay: false
    )

    @Option(name: .long, help: "The server's socket path.")
    var socket: String

    func run() async throws {
        let (pushes, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        try await reportingErrors {
            try await Client.withConnection(to: self.socket, onMessage: { continuation.yield($0) }) { _ in
                for await push in pushes {
                    Output.line("server pushed: \(describe(push))")
                    break
                }
            }
        }
    }
}
