import Foundation
import Logging
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

/// The README's examples, compiled and run, so that the first thing a user copies works.
@Suite("README examples", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ReadmeExampleTests {
    struct Sum: Codable { var numbers: [Int] }
    struct Total: Codable, Equatable { var total: Int }

    // From "Server".
    struct Counter: ConnectionHandler {
        var seen = 0
        mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) { seen += 1 }
        mutating func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            if let sum = try? request.decodeJSON(as: Sum.self) {
                reply.succeed(encoding: Total(total: sum.numbers.reduce(0, +)))
            } else {
                reply.succeed(ByteBuffer(string: "seen \(seen)"))
            }
        }
        func connectionDidOpen(_ connection: Connection) {
            Task { try await connection.send(ByteBuffer(string: "welcome")) }
        }
    }

    @Test("the first screen's echo server and client")
    func firstScreen() async throws {
        try await withTestServer(socketName: "app.sock", makeServer: { configuration, onServerRunning in
            Server.framed(configuration: configuration, logger: testLogger, onServerRunning: onServerRunning) {
                AsyncRequestHandler { request, _ in request }
            }
        }) { _, path in
            let reply = try await Client.withConnection(to: path) { connection in
                try await connection.request(ByteBuffer(string: "ping"))
            }
            #expect(String(buffer: reply) == "ping")
        }
    }

    @Test("the Server and Client sections: a stateful handler, a push, one-way messages, typed requests")
    func serverAndClient() async throws {
        let (pushes, continuation) = AsyncStream.makeStream(of: String.self)
        try await withTestServer(socketName: "counter.sock", makeServer: { configuration, onServerRunning in
            Server.framed(configuration: configuration, logger: testLogger, onServerRunning: onServerRunning) {
                Counter()
            }
        }) { _, path in
            try await Client.withConnection(to: path, onMessage: { continuation.yield(String(buffer: $0)) }) { connection in
                try await connection.send(ByteBuffer(string: "one-way"))
                let reply = try await connection.request(ByteBuffer(string: "question"), timeout: .seconds(60))
                #expect(String(buffer: reply) == "seen 1")
                let total = try await connection.request(Sum(numbers: [1, 2]), as: Total.self)
                #expect(total == Total(total: 3))
                var iterator = pushes.makeAsyncIterator()
                #expect(await iterator.next() == "welcome")
            }
        }
        let handler = EOFMessageHandler.collecting { message, context in
            context.logger.info("got \(message.readableBytes) bytes from \(context.peer.map { "\($0)" } ?? "?")")
            return ByteBuffer(string: "ok")
        }
        try await withTestServer(socketName: "inbox.sock", makeServer: { configuration, onServerRunning in
            Server.eof(configuration: configuration, logger: testLogger, onServerRunning: onServerRunning, handler: handler)
        }) { _, inboxPath in
            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: inboxPath)
            #expect(String(buffer: acknowledgement) == "ok")
        }
    }
}
