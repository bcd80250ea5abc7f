import ArgumentParser
import Foundation
import NIOCore
import SocketIPC

/// `socket-ipc send`: one message, EOF-style or framed one-way.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send one message.",
        discussion: """
            With --eof: connects, writes MESSAGE (or standard input, streamed, when no MESSAGE is given), \
            half-closes and prints the server's acknowledgement (`ack: N` for a 4-byte count). Without it: sends a \
            framed one-way message.
            """
    )

    @Option(name: .long, help: "The server's socket path.")
    var socket: String

    @Flag(name: .long, help: "Send EOF-style (one message per connection) instead of framed.")
    var eof = false

    @Argument(help: "The message; standard input when omitted.")
    var message: String?

    func run() async throws {
        try await reportingErrors {
            if self.eof {
                let acknowledgement: ByteBuffer
                if let message = self.message {
                    acknowledgement = try await Client.sendMessage(ByteBuffer(string: message), to: self.socket)
                } else {
                    acknowledgement = try await Client.sendMessage(to: self.socket) { writer in
                        for try await chunk in StandardInput.chunks() { try await writer.write(chunk) }
                    }
                }
                Output.line(Self.describeAcknowledgement(acknowledgement))
            } else {
                let payload: ByteBuffer
                if let message = self.message {
                    payload = ByteBuffer(string: message)
                } else {
                    payload = try await StandardInput.readAll()
                }
                try await Client.withConnection(to: self.socket) { connection in
                    try await connection.send(payload)
                }
                Output.line("sent \(payload.readableBytes) bytes")
            }
        }
    }

    static func describeAcknowledgement(_ acknowledgement: ByteBuffer) -> String {
        if acknowledgement.readableBytes == 4, let count = acknowledgement.getInteger(at: acknowledgement.readerIndex, as: UInt32.self) {
            return "ack: \(count)"
        }
        if acknowledgement.readableBytes == 0 { return "no acknowledgement" }
        return "ack: \(describe(acknowledgement))"
    }
}

/// Standard input, read off Swift's cooperative threads.
enum StandardInput {
    /// Chunks of standard input until EOF.
    static func chunks() -> AsyncThrowingStream<ByteBuffer, any Error> {
        AsyncThrowingStream { continuation in
            let thread = Thread {
                let handle = FileHandle.standardInput
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    continuation.yield(ByteBuffer(bytes: data))
                }
                continuation.finish()
            }
            thread.start()
        }
    }

    /// All of standard input.
    static func readAll() async throws -> ByteBuffer {
        var all = ByteBuffer()
        for try await var chunk in Self.chunks() { all.writeBuffer(&chunk) }
        return all
    }
}
