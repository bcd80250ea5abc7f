import ArgumentParser
import Foundation
import NIOCore
import SocketIPC

/// `socket-ipc send`: one message, EOF-style or framed one-way.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send one message, EOF-style or as a framed one-way message.",
        discussion: """
            With --eof: connects, writes MESSAGE (or standard input, streamed as it comes, when MESSAGE is \
            omitted), half-closes, and prints the server's acknowledgement: `ack: N` for a 4-byte count, the text \
            or hex of anything else, or `no acknowledgement`. It exits 1 with `error: ...` when the message was not \
            delivered (the server closed the connection before it had read all of it: the message is over its \
            maximum, its policy refused you, or it is at its connection limit or shutting down), and when the \
            server turns out to be a framed one ("this is a framed server ... drop --eof"). (An empty message has no             bytes left unread to tell a refusal by: it cannot be told from one delivered.)

            Without --eof: connects to a framed server, sends MESSAGE (or all of standard input) as one one-way \
            message, prints `sent N bytes` and closes once it is written.
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Flag(name: .long, help: "Send EOF-style (one message per connection, ended by a half-close) instead of framed.")
    var eof = false

    @Argument(help: "The message; standard input when omitted.")
    var message: String?

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        if self.eof {
            let acknowledgement: ByteBuffer
            if let message = self.message {
                acknowledgement = try await Client.sendMessage(ByteBuffer(string: message), to: path)
            } else {
                acknowledgement = try await Client.sendMessage(to: path) { writer in
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
            try await Client.withConnection(to: path) { connection in
                try await connection.send(payload)
            }
            Output.line("sent \(payload.readableBytes) bytes")
        }
    }

    /// `ack: N` for a 4-byte big-endian count, `no acknowledgement` for none, else `ack: ` and the bytes.
    static func describeAcknowledgement(_ acknowledgement: ByteBuffer) -> String {
        if acknowledgement.readableBytes == 4,
            let count = acknowledgement.getInteger(at: acknowledgement.readerIndex, as: UInt32.self)
        {
            return "ack: \(count)"
        }
        if acknowledgement.readableBytes == 0 { return "no acknowledgement" }
        return "ack: \(describe(acknowledgement))"
    }
}

/// Standard input, read on a thread of its own so that no task blocks Swift's cooperative threads.
///
/// The reader stays at most a few chunks ahead of the consumer, so a message of any size passes through in bounded
/// memory.
struct StandardInput: AsyncSequence {
    typealias Element = ByteBuffer

    /// How many bytes one `read` takes at most.
    static let chunkSize = 64 * 1024
    /// How many chunks the reader may be ahead of the consumer.
    static let chunksAhead = 4

    /// Chunks of standard input as they come, until EOF.
    static func chunks() -> StandardInput { StandardInput() }

    /// All of standard input.
    static func readAll() async throws -> ByteBuffer {
        var all = ByteBuffer()
        for try await var chunk in Self.chunks() { all.writeBuffer(&chunk) }
        return all
    }

    func makeAsyncIterator() -> Iterator {
        let credits = Credits(Self.chunksAhead)
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: Self.chunkSize)
            while true {
                credits.take()
                let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
                if count > 0 {
                    continuation.yield(ByteBuffer(bytes: buffer[0..<count]))
                } else if count == 0 {
                    continuation.finish()
                    return
                } else if errno != EINTR {
                    let message = String(cString: strerror(errno))
                    continuation.finish(throwing: ValidationError("could not read standard input: \(message)"))
                    return
                } else {
                    credits.give()
                }
            }
        }
        reader.start()
        return Iterator(chunks: stream.makeAsyncIterator(), credits: credits)
    }

    /// Hands out the chunks the reader thread read, and lets it read one more for each.
    struct Iterator: AsyncIteratorProtocol {
        var chunks: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator
        let credits: Credits

        mutating func next() async throws -> ByteBuffer? {
            let chunk = try await self.chunks.next()
            if chunk != nil { self.credits.give() }
            return chunk
        }
    }

    /// How many more chunks the reader may read: it takes one before each read, the consumer gives one back for each
    /// chunk it takes. (Not a `DispatchSemaphore`: libdispatch traps when one is released with a value below its
    /// initial one, as it is when the consumer stops early.)
    final class Credits: @unchecked Sendable {
        private let condition = NSCondition()
        private var available: Int

        init(_ available: Int) { self.available = available }

        /// Waits until a credit is available and takes it.
        func take() {
            self.condition.lock()
            while self.available == 0 { self.condition.wait() }
            self.available -= 1
            self.condition.unlock()
        }

        /// Gives back a credit.
        func give() {
            self.condition.lock()
            self.available += 1
            self.condition.signal()
            self.condition.unlock()
        }
    }
}
