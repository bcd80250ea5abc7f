import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

/// Busy polling (``ConnectionOptions/busyPolling``: the adaptive default, the latency mode, off) changes how event
/// loops wait, never what arrives: the same exchanges in each mode, on both sides, including connections that close
/// while their loop polls, and answers made on other threads while it polls.
@Suite("Busy polling", .timeLimit(.minutes(5)), .limitedConcurrency)
struct BusyPollingTests {
    @Test(
        "requests, one-way messages, answers from other threads and a large message work, across many closes",
        arguments: [BusyPolling.adaptive(), .fixed(.microseconds(200)), .off]
    )
    func exchanges(polling: BusyPolling) async throws {
        var connectionOptions = ConnectionOptions()
        connectionOptions.busyPolling = polling
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
                    // Answered from a task on the global executor: the flush it queues ends the loop's poll.
                    for index in 0..<50 {
                        let reply = try await connection.request(ByteBuffer(string: "later \(index)"))
                        #expect(String(buffer: reply) == "later \(index)")
                    }
                    let large = ByteBuffer(repeating: 0x5A, count: 4 * 1024 * 1024)
                    #expect(try await connection.request(large) == large)
                }
            }
        }
        #expect(received.items.withLock { $0.count } == 500, "every one-way message arrived")
    }

    @Test("the default is adaptive polling with a 200 µs maximum; busyPollDuration sets and reads the latency mode")
    func defaults() {
        var options = ConnectionOptions()
        #expect(options.busyPolling == .adaptive(maximum: .microseconds(200)))
        #expect(options.busyPollDuration == nil)
        options.busyPollDuration = .microseconds(50)
        #expect(options.busyPolling == .fixed(.microseconds(50)))
        #expect(options.busyPollDuration == .microseconds(50))
        options.busyPollDuration = .zero
        #expect(options.busyPolling == .off)
        options.busyPollDuration = nil
        #expect(options.busyPolling == .adaptive())
        #expect(BusyPolling.adaptive(maximum: .zero) == .off)
        #expect("\(BusyPolling.adaptive())" == "adaptive(maximum: 200 µs)")
    }
}

/// Echoes requests and records one-way messages.
private struct EchoCountingHandler: ConnectionHandler {
    let received: Recorder

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.received.items.withLock { $0.append(String(buffer: message)) }
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        if request.readableBytes < 64, String(buffer: request).hasPrefix("later ") {
            reply.complete { request }
        } else {
            reply.succeed(request)
        }
    }
}
