import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

/// Connections that hold a slot without using it are closed (issue 9, section 4, framed): a peer that does not
/// complete its hello within the server's handshake timeout, and a connection idle for its idle timeout. Each test
/// waits for the close itself, never for a fixed time.
@Suite("Handshake and idle timeouts", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct TimeoutTests {
    static let shortTimeout = Duration.milliseconds(200)

    /// Runs `body` with a raw client of an echo server whose handshake timeout is ``shortTimeout``.
    private static func withClientOfShortHandshakeServer(_ body: (RawSocket) async throws -> Void) async throws {
        try await withFramedTestServer(
            configure: { $0.handshakeTimeout = Self.shortTimeout },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await body(socket)
        }
    }

    @Test("a peer that sends no hello, or only part of it, is closed after the handshake timeout", arguments: [0, 1, 7])
    func handshakeTimeout(helloBytesSent: Int) async throws {
        try await Self.withClientOfShortHandshakeServer { socket in
            try await socket.send(pieces: [Array(helloBytes.prefix(helloBytesSent))])
            let received = try await socket.readUntilClosed()
            #expect(try ReadBoundaryTests.goAwayReason(in: received) == 0x01)
        }
    }

    @Test("a hello written one byte at a time, slower than the handshake timeout, is cut off")
    func slowHello() async throws {
        try await Self.withClientOfShortHandshakeServer { socket in
            let trickle = Task {
                // The pace of a hostile peer, not a synchronisation: the test waits for the server's close.
                for byte in helloBytes {
                    try await socket.send(pieces: [[byte]])
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
            let received = try await socket.readUntilClosed()
            #expect(try ReadBoundaryTests.goAwayReason(in: received) == 0x01)
            trickle.cancel()
            _ = await trickle.result
        }
    }

    @Test("an idle connection gets going-away 0x00 'idle timeout' from the server, which then closes it")
    func serverIdleTimeout() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.idleTimeout = Self.shortTimeout },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.send(pieces: [helloBytes])
            let received = try await socket.readUntilClosed()
            #expect(received == serverHelloBytes + goAwayBytes(reason: 0x00, text: "idle timeout"))
        }
    }

    @Test("a request in flight keeps a connection from being idle")
    func requestInFlightIsNotIdle() async throws {
        // Longer than the others: the request must reach the server before the connection has been idle this long,
        // also on a machine loaded with the other tests (a CI run once resumed a test's task more than 3 s late).
        let idleTimeout = Duration.seconds(5)
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        try await withFramedTestServer(
            configure: { $0.connection.idleTimeout = idleTimeout },
            makeHandler: { HoldingEchoHandler(held: heldContinuation) }
        ) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            async let answer = { () async throws -> ByteBuffer in
                do {
                    return try await connection.request(ByteBuffer(string: "hold"))
                } catch {
                    // Failed before the server held it (closed as idle first): fail below at once, not at the
                    // suite's time limit.
                    heldContinuation.finish()
                    throw error
                }
            }()
            var replies = held.makeAsyncIterator()
            let reply = try #require(await replies.next(), "the request failed before the server held it")
            // Longer than the idle timeout since the request: the connection must stay open while it is in flight.
            try await Task.sleep(for: idleTimeout + .seconds(1))
            reply.succeed(ByteBuffer(string: "late"))
            #expect(String(buffer: try await answer) == "late")
            // Then, idle, it is closed.
            await connection.waitUntilClosed()
            #expect(!connection.isOpen)
        }
    }

    @Test("a client's idle timeout closes its own idle connection")
    func clientIdleTimeout() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            var configuration = ClientConfiguration()
            configuration.connection.idleTimeout = Self.shortTimeout
            let connection = try await Client.connect(to: path, configuration: configuration)
            await connection.waitUntilClosed()
            #expect(!connection.isOpen)
            await #expect(throws: SocketIPCError.self) { _ = try await connection.request(ByteBuffer(string: "again")) }
        }
    }
}
