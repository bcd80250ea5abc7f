import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// Request ids are 32 bits and wrap around (PROTOCOL.md, "Requests, replies and ids"): a connection that lives long
/// enough comes round to the id of a request the peer has not answered, which is skipped. Call ids are never used
/// twice (PROTOCOL.md, "Call ids"). The counters are set close to their end here instead of making 2^32 requests.
@Suite("Request ids wrap around without reusing one in flight; call ids are never reused", .timeLimit(.minutes(5)), .limitedConcurrency)
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

    @Test("call ids are never used twice: after 2^31 calls the connection goes away, calls in progress finish, and new ones fail with connectionClosed")
    func callIDs() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            try await connection.bidirectionalStreaming(Echo.self) { writer, responses in
                var iterator = responses.makeAsyncIterator()
                try await writer.write(1)
                #expect(try await iterator.next() == 10)
                // The echo call is id 1. The last id of this side's 2^31, 0xFFFFFFFF, is still fresh.
                connection.calls.opened.store((1 << 31) - 1, ordering: .relaxed)
                #expect(try await connection.call(SetValue.self, .init(key: "colour", value: "blue")))
                // Then the ids would come round to 1 again: before, a call cancelled long ago (forgotten by this side,
                // still open at the server until its handler ends) had its id reused, and the server took the open
                // for a second one (a protocol error) or answered the new call with the old one's response.
                let error = await #expect(throws: SocketIPCError.self) {
                    try await connection.call(Get.self, "colour")
                }
                #expect(error?.code == .connectionClosed, "\(String(describing: error))")
                #expect(error?.message.contains("2^31") == true, "\(String(describing: error))")
                // The call in progress goes on until it ends.
                try await writer.write(2)
                #expect(try await iterator.next() == 20)
            }
            // Then the connection, which went away, closes; no protocol error on either side.
            await connection.waitUntilClosed()
            #expect(connection.closeError?.code != .protocolViolation, "\(String(describing: connection.closeError))")
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
