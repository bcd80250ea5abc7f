import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// Request ids and call ids are 32 bits and wrap around (PROTOCOL.md, "Requests, replies and ids" and "Call ids"). A
/// connection that lives long enough comes round to the id of something still in flight: a request the peer has
/// not answered, a watch opened at the start. Reusing that id would hand the old request's reply to the new one (and
/// leave the old one waiting for ever), or make the peer see a second open of a call still open (a protocol error
/// that closes the connection). The counters are set close to their wrap here instead of making 2^32 requests.
@Suite("Request and call ids wrap around without reusing one in flight", .timeLimit(.minutes(5)), .limitedConcurrency)
struct IDWraparoundTests {
    @Test("after wrapping around, a request skips the id of a request still waiting, and both get their own reply")
    func requestIDs() async throws {
        let held = HeldReply()
        try await withFramedTestServer(makeHandler: { HoldingHandler(held: held) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            // The connection's first request, id 1: held by the server until it is told to answer.
            let first = Task { try await connection.request(ByteBuffer(string: "hold"), timeout: .seconds(60)) }
            for await _ in held.kept.stream { break }
            // The next count is 2^32, id 0, then 2^32 + 1, whose id is 1 again: taken, so it gets 2.
            connection.requestIDs.store(UInt64(UInt32.max), ordering: .relaxed)
            #expect(connection.nextRequestID() == 0)
            #expect(connection.nextRequestID() == 2)
            // Count 2^32 + 1 again: without the skip this request would be id 1, take the held one's reply, and
            // leave the held one waiting for ever.
            connection.requestIDs.store(UInt64(UInt32.max) + 1, ordering: .relaxed)
            #expect(try await connection.request(ByteBuffer(string: "release")) == ByteBuffer(string: "released"))
            #expect(try await first.value == ByteBuffer(string: "the held one"))
            // Once id 1 is answered, it is free again when the count comes round to it.
            connection.requestIDs.store(UInt64(UInt32.max) * 2 + 1, ordering: .relaxed)
            #expect(connection.nextRequestID() == 0)
            #expect(connection.nextRequestID() == 1)
        }
    }

    @Test("after wrapping around, a call skips the id of a call still open, which goes on working")
    func callIDs() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            try await connection.bidirectionalStreaming(Echo.self) { writer, responses in
                var iterator = responses.makeAsyncIterator()
                try await writer.write(1)
                #expect(try await iterator.next() == 10)
                // The echo call is id 1; the next count wraps, and its id would be 1 again.
                connection.calls.opened.store(1 << 31, ordering: .relaxed)
                // Without the skip, the server would take this open for a second open of call 1 and close the
                // connection with a protocol error.
                #expect(try await connection.call(SetValue.self, .init(key: "colour", value: "blue")))
                #expect(try await connection.call(Get.self, "colour") == "blue")
                try await writer.write(2)
                #expect(try await iterator.next() == 20)
            }
            #expect(connection.closeError == nil)
        }
    }
}

/// Keeps the reply of a request "hold" until a request "release" comes, which answers it and then itself.
private struct HoldingHandler: ConnectionHandler {
    let held: HeldReply

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        switch String(buffer: request) {
        case "hold":
            self.held.reply.withLock { $0 = reply }
            self.held.kept.continuation.yield()
        case "release":
            self.held.reply.withLock { $0.take() }?.succeed(ByteBuffer(string: "the held one"))
            reply.succeed(ByteBuffer(string: "released"))
        default: reply.succeed(request)
        }
    }
}

/// The reply the server holds, and a signal once it holds it.
private final class HeldReply: Sendable {
    let reply = Mutex<Reply?>(nil)
    let kept = AsyncStream<Void>.makeStream()
}
