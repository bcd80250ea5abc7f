import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import Testing

/// The latency mode (``ConnectionOptions/busyPollDuration``) changes how event loops wait, never what arrives: the
/// same exchanges as without it, on both sides, including connections that close while their loop polls.
@Suite("Latency mode", .timeLimit(.minutes(1)))
struct LatencyModeTests {
    @Test("requests, one-way messages and a large message work with busy polling on both sides, across many closes")
    func exchanges() async throws {
        var connectionOptions = ConnectionOptions()
        connectionOptions.busyPollDuration = .microseconds(200)
        var clientConfiguration = ClientConfiguration()
        clientConfiguration.connection = connectionOptions
        let received = Recorder()
        try await withFramedTestServer(
            configure: { $0.connection = connectionOptions },
            makeHandler: { EchoCountingHandler(received: received) }
        ) { _, path in
            // Several connections one after another: each closes while its event loop may still be polling it.
            for round in 0..<5 {
                try await Client.withConnection(to: path, configuration: clientConfiguration) { connection in
                    for index in 0..<200 {
                        let reply = try await connection.request(ByteBuffer(string: "r\(round).\(index)"))
                        #expect(String(buffer: reply) == "r\(round).\(index)")
                    }
                    for index in 0..<100 { try await connection.send(ByteBuffer(string: "m\(index)")) }
                    let large = ByteBuffer(repeating: 0x5A, count: 4 * 1024 * 1024)
                    #expect(try await connection.request(large) == large)
                }
            }
        }
        #expect(received.items.withLock { $0.count } == 500, "every one-way message arrived")
    }
}

/// Echoes requests and records one-way messages.
private struct EchoCountingHandler: ConnectionHandler {
    let received: Recorder

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.received.items.withLock { $0.append(String(buffer: message)) }
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}
