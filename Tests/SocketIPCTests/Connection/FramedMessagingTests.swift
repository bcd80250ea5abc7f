import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Framed messages", .timeLimit(.minutes(5)), .limitedConcurrency)
struct FramedMessagingTests {
    @Test("payloads of 0, 1 and exactly the maximum bytes go both ways; one byte more is refused before sending",
          arguments: [0, 1, 16 * 1024 * 1024])
    func sizes(size: Int) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            try await Client.withConnection(to: path) { connection in
                let payload = ByteBuffer(repeating: 0xA5, count: size)
                let reply = try await connection.request(payload)
                #expect(reply == payload)
                try await connection.send(payload)
                let tooLarge = ByteBuffer(repeating: 0, count: 16 * 1024 * 1024 + 1)
                let error = await #expect(throws: SocketIPCError.self) { try await connection.send(tooLarge) }
                #expect(error?.code == .messageTooLarge)
                #expect(String(buffer: try await connection.request(ByteBuffer(string: "alive"))) == "alive")
            }
        }
    }

    @Test("one-way messages arrive in order and the server can push to the client")
    func oneWayBothDirections() async throws {
        let received = Recorder()
        let (pushes, pushContinuation) = AsyncStream.makeStream(of: String.self)
        try await withFramedTestServer(makeHandler: { RecordingHandler(received: received) }) { _, path in
            try await Client.withConnection(to: path, onMessage: { pushContinuation.yield(String(buffer: $0)) }) { connection in
                for index in 0..<1000 { try await connection.send(ByteBuffer(string: "m\(index)")) }
                // The server pushes the count it has seen when asked; frames are handled in order.
                try await connection.send(ByteBuffer(string: "push"))
                var iterator = pushes.makeAsyncIterator()
                #expect(await iterator.next() == "seen 1000")
            }
        }
        #expect(received.items.withLock { $0 } == (0..<1000).map { "m\($0)" })
    }

    @Test("messages larger than the socket buffer, among small ones and concurrent large requests, arrive whole and in order")
    func largeAndSmallInOrder() async throws {
        let received = Recorder()
        try await withFramedTestServer(makeHandler: { PatternCheckingHandler(received: received) }) { _, path in
            // From the connection's event loop a flush writes straight to the socket until the socket is full;
            // the rest then goes through the channel, and every later flush must queue behind it.
            try await Client.withConnection(to: path) { connection in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for index in 0..<50 {
                            try await connection.send(patternMessage(index: index, size: index % 10 == 0 ? 3_000_000 : 50 + index))
                        }
                    }
                    group.addTask {
                        for index in 0..<6 {
                            let request = patternMessage(index: 1000 + index, size: 2_000_000)
                            let reply = try await connection.request(request)
                            #expect(reply == request)
                        }
                    }
                    try await group.waitForAll()
                }
                // Frames are handled in order: once this is answered, every message before it was handled.
                _ = try await connection.request(ByteBuffer(string: "done"))
            }
        }
        #expect(received.items.withLock { $0 } == (0..<50).map { "\($0) whole" })
    }

    @Test("a frame split into 1-byte writes is decoded")
    func oneByteWrites() async throws {
        // The hello must arrive within the server's handshake timeout (10 s by default); its bytes one write each
        // took longer than that in a loaded CI run. This test is about decoding, not the timeout.
        try await withFramedTestServer(configure: { $0.handshakeTimeout = .seconds(120) }, makeHandler: { EchoHandler() }) {
            _,
            path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            #expect(try await socket.read(exactly: 8) == serverHelloBytes)
            let payload = Array("byte by byte".utf8)
            try await socket.write(helloBytes + frameBytes(kind: 0x02, id: 42, payload: payload), chunkSize: 1)
            #expect(try await socket.read(exactly: 9 + payload.count) == frameBytes(kind: 0x03, id: 42, payload: payload))
        }
    }

    @Test("a frame header claiming more than the maximum closes that connection with a going-away frame; the server goes on")
    func oversizedClaim() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            // Claims 1 GiB and sends none of it: the server must not wait for (or allocate) the payload.
            try await socket.write(helloBytes + [0x40, 0x00, 0x00, 0x00, 0x01])
            let answer = try await socket.readToEnd()
            #expect(Array(answer.prefix(8)) == serverHelloBytes)
            #expect(answer.count > 14 && answer[12] == 0x05 && answer[13] == 0x02, "going-away, reason message too large")
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "next")) }
            #expect(String(buffer: reply) == "next")
        }
    }

    @Test("a client whose limit is larger than the server's gets a typed error when it sends too much")
    func serverLimitReachesClient() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = 1024 },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await connection.request(ByteBuffer(repeating: 1, count: 1025))
            }
            #expect(error?.code == .messageTooLarge)
            await connection.waitUntilClosed()
            #expect(!connection.isOpen)
        }
    }

    @Test("a peer that does not speak the protocol, or another version, gets a clear error",
          arguments: [(Array("GET / HTTP/1.1\r\n".utf8), UInt8(0x01)), ([0x53, 0x49, 0x50, 0x43, 0x02, 0, 0, 0], UInt8(0x03))] as [([UInt8], UInt8)])
    func wrongHello(bytes: [UInt8], reason: UInt8) async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write(bytes)
            let answer = try await socket.readToEnd()
            #expect(answer.count > 14 && answer[12] == 0x05 && answer[13] == reason)
        }
    }

    @Test("a client connecting to something that is not a SocketIPC server fails with notSocketIPCPeer")
    func clientMeetsForeignServer() async throws {
        let handler = EOFMessageHandler.onEventLoop { _, _ in ByteBuffer(string: "HTTP/1.1 400 Bad Request\r\n") }
        try await withEOFTestServer(handler: handler) { _, path in
            // The EOF server answers only after EOF, so the client's hello wait times out: make it short.
            var configuration = ClientConfiguration()
            configuration.connectTimeout = .milliseconds(200)
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path, configuration: configuration) }
            #expect(error?.code == .timedOut)
        }
    }
}

/// Records one-way messages; on `push`, pushes back how many it has seen.
struct RecordingHandler: ConnectionHandler {
    let received: Recorder
    var count = 0

    mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        let text = String(buffer: message)
        if text == "push" {
            let count = self.count
            Task { try await connection.send(ByteBuffer(string: "seen \(count)")) }
        } else {
            self.count += 1
            self.received.items.withLock { $0.append(text) }
        }
    }
}

/// `size` bytes: `index` as a big-endian UInt32, then the byte `index % 256` repeated.
func patternMessage(index: Int, size: Int) -> ByteBuffer {
    var message = ByteBuffer()
    message.writeInteger(UInt32(index))
    message.writeRepeatingByte(UInt8(truncatingIfNeeded: index), count: size - 4)
    return message
}

/// Records "INDEX whole" for each one-way message that matches ``patternMessage(index:size:)``; echoes requests.
struct PatternCheckingHandler: ConnectionHandler {
    let received: Recorder

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        guard let index = message.getInteger(at: message.readerIndex, as: UInt32.self) else {
            self.received.items.withLock { $0.append("short message") }
            return
        }
        let whole = message == patternMessage(index: Int(index), size: message.readableBytes)
        self.received.items.withLock { $0.append("\(index) \(whole ? "whole" : "corrupt")") }
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}
