import Metrics
import MetricsTestKit
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

@Suite("Server metrics", .timeLimit(.minutes(5)), .limitedConcurrency)
struct MetricsTests {
    @Test("a framed server counts connections accepted, active, unauthorized and closed by an error")
    func framedServer() async throws {
        let metrics = TestMetrics()
        try await withFramedTestServer(
            configure: { $0.metricsFactory = metrics },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let first = try await Client.connect(to: path)
            let second = try await Client.connect(to: path)
            _ = try await first.request(ByteBuffer(string: "one"))
            _ = try await second.request(ByteBuffer(string: "two"))
            #expect(try metrics.expectMeter("socketipc_connections_active").lastValue == 2)
            first.close()
            second.close()
            await first.waitUntilClosed()
            await second.waitUntilClosed()

            // A peer that does not speak the protocol is closed with notSocketIPCPeer.
            let stranger = try await RawSocket.connect(to: path)
            defer { stranger.close() }
            try await stranger.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            _ = try await stranger.readToEnd()
        }
        // The server has stopped: every close has been counted.
        #expect(try metrics.expectCounter("socketipc_connections_accepted_total").totalValue == 3)
        #expect(try metrics.expectMeter("socketipc_connections_active").lastValue == 0)
        #expect(
            try metrics.expectCounter("socketipc_connection_errors_total", [("code", "notSocketIPCPeer")]).totalValue == 1
        )
        #expect(metrics.counterTotal(label: "socketipc_connection_errors_total") == 1, "orderly closes are no errors")
    }

    @Test(
        "an EOF-style server counts messages over its maximum and handlers that fail",
        arguments: ["on the event loop", "collecting"]
    )
    func eofErrors(handlerKind: String) async throws {
        let metrics = TestMetrics()
        let body: @Sendable (ByteBuffer) throws -> ByteBuffer = { message in
            if String(buffer: message) == "fail" { throw SocketIPCError(.remoteError, "failing on purpose") }
            return ByteBuffer(string: "ok")
        }
        let handler: EOFMessageHandler =
            handlerKind == "collecting"
            ? .collecting(maximumSize: 8) { message, _ in try body(message) }
            : .onEventLoop(maximumSize: 8) { message, _ in try body(message) }
        try await withEOFTestServer(handler: handler, configure: { $0.metricsFactory = metrics }) { _, path in
            let fine = try await Client.sendMessage(ByteBuffer(string: "fine"), to: path)
            #expect(String(buffer: fine) == "ok")
            _ = try? await Client.sendMessage(ByteBuffer(string: "far more than eight bytes"), to: path)
            let failed = try await Client.sendMessage(ByteBuffer(string: "fail"), to: path)
            #expect(failed.readableBytes == 0)
        }
        #expect(try metrics.expectCounter("socketipc_connection_errors_total", [("code", "messageTooLarge")]).totalValue == 1)
        #expect(try metrics.expectCounter("socketipc_connection_errors_total", [("code", "remoteError")]).totalValue == 1)
        #expect(metrics.counterTotal(label: "socketipc_connection_errors_total") == 2)
        #expect(try metrics.expectCounter("socketipc_connections_accepted_total").totalValue == 3)
    }

    @Test("peers the authorization policy refuses are counted, on framed and EOF-style servers")
    func unauthorized() async throws {
        let metrics = TestMetrics()
        try await withFramedTestServer(
            configure: {
                $0.metricsFactory = metrics
                $0.authorization = .users([UInt32.max - 1])
            },
            makeHandler: { EchoHandler() }
        ) { _, path in
            _ = await #expect(throws: SocketIPCError.self) {
                try await Client.withConnection(to: path) { _ = try await $0.request(ByteBuffer(string: "let me in")) }
            }
        }
        #expect(try metrics.expectCounter("socketipc_connections_unauthorized_total").totalValue == 1)
        let eofMetrics = TestMetrics()
        try await withEOFTestServer(
            handler: .onEventLoop { _, _ in ByteBuffer(string: "ok") },
            configure: {
                $0.metricsFactory = eofMetrics
                $0.authorization = .users([UInt32.max - 1])
            }
        ) { _, path in
            await #expect(throws: SocketIPCError.self) { _ = try await Client.sendMessage(ByteBuffer(string: "hi"), to: path) }
        }
        #expect(try eofMetrics.expectCounter("socketipc_connections_unauthorized_total").totalValue == 1)
        #expect(try eofMetrics.expectMeter("socketipc_connections_active").lastValue == 0)
    }
}
