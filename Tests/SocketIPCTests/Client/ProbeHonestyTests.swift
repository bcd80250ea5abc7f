import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// Issue 9, section 2: `Client.probe` calls a listener an EOF-style server only when it waited for the probe's
/// message, read it and closed; and tells a framed server that refuses the caller from one that serves it.
@Suite("Probing tells servers that serve the caller from everything else", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ProbeHonestyTests {
    @Test("a listener that writes a few bytes on accept and closes is another program, not an EOF-style server")
    func greetingListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/http.sock"
            let listener = try ClosingListener(path: path, greeting: "HTTP/1.0 200 OK\r\n\r\n")
            defer { listener.stop() }
            for _ in 0..<20 {
                let result = try await Client.probe(path, timeout: .seconds(10))
                #expect(result.style == .otherProtocol)
                #expect(!result.isServingCaller)
            }
        }
    }

    @Test("a listener that closes at once without reading is reported as such")
    func closingListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/closer.sock"
            let listener = try ClosingListener(path: path)
            defer { listener.stop() }
            for _ in 0..<20 {
                let result = try await Client.probe(path, timeout: .seconds(10))
                #expect(result.style == .closedAtOnce)
                #expect(!result.isServingCaller)
            }
        }
    }

    @Test("a framed server whose policy refuses the caller is framedRefused with reason 0x04")
    func refusingFramedServer() async throws {
        try await withFramedTestServer(
            configure: { $0.authorization = .users([UInt32.max - 1]) },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let result = try await Client.probe(path, timeout: .seconds(10))
            guard case .framedRefused(let version, let reason, _) = result.style else {
                Issue.record("expected framedRefused, got \(result.style)")
                return
            }
            #expect(version == 1)
            #expect(reason == 0x04)
            #expect(!result.isServingCaller)
        }
    }

    @Test("a framed server that serves the caller is framed, and serves it")
    func servingFramedServer() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let result = try await Client.probe(path, timeout: .seconds(10))
            #expect(result.style == .framed(protocolVersion: 1))
            #expect(result.isServingCaller)
        }
    }

    @Test("an EOF-style server whose policy refuses the caller closes at once: not a server that serves it")
    func refusingEOFServer() async throws {
        let handler = EOFMessageHandler.onEventLoop { _, _ in ByteBuffer(string: "ok") }
        try await withEOFTestServer(
            handler: handler,
            configure: { $0.authorization = .users([UInt32.max - 1]) }
        ) { _, path in
            let result = try await Client.probe(path, timeout: .seconds(10))
            #expect(result.style == .closedAtOnce)
            #expect(!result.isServingCaller)
        }
    }

    @Test("an EOF-style server that serves the caller is endOfFile, for each handler form")
    func servingEOFServer() async throws {
        for handler in [
            EOFMessageHandler.onEventLoop { _, _ in ByteBuffer(string: "ok") },
            .collecting { _, _ in ByteBuffer(string: "ok") },
            .streaming { body, _ in
                _ = try await body.collect(upTo: 10)
                return nil
            },
        ] {
            try await withEOFTestServer(handler: handler) { _, path in
                let result = try await Client.probe(path, timeout: .seconds(10))
                #expect(result.isServingCaller)
                guard case .endOfFile = result.style else {
                    Issue.record("expected endOfFile, got \(result.style)")
                    return
                }
            }
        }
    }
}
