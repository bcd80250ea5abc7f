import ArgumentParser
import NIOCore
import SocketIPC

/// `socket-ipc listen-for-push`: connects to a framed server and waits for it to push one message. `demo` runs it
/// as a client process; it is hidden from the help.
struct ListenForPushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "listen-for-push",
        abstract: "Connect to a framed server and print the first message it pushes.",
        shouldDisplay: false
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let (pushes, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        try await Client.withConnection(to: path, onMessage: { continuation.yield($0) }) { connection in
            // Ends without a push too: when the server closes the connection first.
            Task { [continuation] in
                await connection.waitUntilClosed()
                continuation.finish()
            }
            var iterator = pushes.makeAsyncIterator()
            guard let push = await iterator.next() else {
                throw SocketIPCError(.connectionClosed, "the server closed the connection without pushing a message")
            }
            Output.line("server pushed: \(describe(push))")
        }
    }
}
