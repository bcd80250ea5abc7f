import Logging
import NIOCore
import SocketIPC
import Synchronization
import Testing

// Peers for the tests of the server's conveniences (connections, broadcast, shutdown hooks, refusals).

/// A framed client whose messages from the server come out of `messages`, in order. Connected with one request
/// answered by an ``EchoHandler`` server, so that the server has read its hello (the connection is in
/// `Server.connections`) by the time ``connect(to:)`` returns.
struct RecordingClient {
    let connection: Connection
    var messages: AsyncStream<String>.Iterator

    static func connect(to path: String) async throws -> RecordingClient {
        let (messages, message) = AsyncStream.makeStream(of: String.self)
        let connection = try await Client.connect(to: path) { message.yield(String(buffer: $0)) }
        _ = try await connection.request(ByteBuffer(string: "handshake"))
        return RecordingClient(connection: connection, messages: messages.makeAsyncIterator())
    }

    /// The next message the server sent; `nil` if the connection closed first.
    mutating func next() async -> String? {
        await self.messages.next()
    }
}

/// A raw socket that has said hello and had one request answered by an ``EchoHandler`` server (so the server lists
/// its connection), with the server's hello and that reply read: what it reads next is what the server sends after.
func connectEstablishedRawSocket(to path: String) async throws -> RawSocket {
    let socket = try await RawSocket.connect(to: path)
    try await socket.write(helloBytes + frameBytes(kind: 0x02, id: 1, payload: Array("hi".utf8)))
    let answer = try await socket.read(exactly: helloBytes.count + 11)
    #expect(Array(answer.suffix(11)) == frameBytes(kind: 0x03, id: 1, payload: Array("hi".utf8)))
    return socket
}

/// A frame as read off the wire: its kind byte and the bytes after it.
struct RawFrame: Equatable, CustomStringConvertible {
    var kind: UInt8
    var body: [UInt8]

    /// A one-way message (`0x01`) with `text` as its payload.
    static func message(_ text: String) -> RawFrame { RawFrame(kind: 0x01, body: Array(text.utf8)) }

    var description: String { "kind \(self.kind): \(String(decoding: self.body, as: UTF8.self))" }

    /// The frames in `bytes` (which start at a frame boundary), in order; a truncated last frame is dropped.
    static func parse(_ bytes: [UInt8]) -> [RawFrame] {
        var frames: [RawFrame] = []
        var offset = 0
        while bytes.count - offset >= 5 {
            let length = bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
            guard bytes.count - offset - 4 >= length, length >= 1 else { break }
            frames.append(RawFrame(kind: bytes[offset + 4], body: Array(bytes[(offset + 5)..<(offset + 4 + length)])))
            offset += 4 + length
        }
        return frames
    }
}

/// Keeps what is logged, for tests that look at log lines.
final class CapturedLog: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    let entries = Mutex<[Entry]>([])

    /// A logger that logs here, at `level` and above.
    func logger(level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: "socketipc.tests.captured") { _ in Handler(log: self) }
        logger.logLevel = level
        return logger
    }

    private struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let entry = Entry(
                level: event.level,
                message: "\(event.message)",
                metadata: self.metadata.merging(event.metadata ?? [:]) { $1 }
            )
            self.log.entries.withLock { $0.append(entry) }
        }
    }
}
