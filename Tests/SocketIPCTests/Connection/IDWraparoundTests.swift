import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// Request and call ids are 32 bits, and no id is used twice on a connection (PROTOCOL.md, "Requests, replies and ids"
/// and "Call ids"), as no HTTP/2 stream id is: once they are all used, the connection goes away and new requests and
/// calls go to a new connection. The counters are set close to their end here instead of making 2^32 requests.
@Suite("Request and call ids are never reused on a connection", .timeLimit(.minutes(5)), .limitedConcurrency)
struct IDWraparoundTests {
    @Test("request ids are never used twice: after 2^32 requests the connection goes away, requests in flight get their replies, and new ones fail with connectionClosed")
    func requestIDs() async throws {
        let held = HeldReply()
        try await withFramedTestServer(makeHandler: { HoldingHandler(held: held) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            // The connection's first request, id 1: held by the server until it is told to answer.
            let first = Task { try await connection.request(ByteBuffer(string: "hold"), timeout: .seconds(60)) }
            for await _ in held.kept.stream { break }
            // The last id, 0 (the 2^32nd), is still fresh.
            connection.requestIDs.store(UInt64(UInt32.max), ordering: .relaxed)
            #expect(try await connection.request(ByteBuffer(string: "zero")) == ByteBuffer(string: "zero"))
            // Then the ids would come round to 1 again: before, a request this side had given up (timed out,
            // cancelled) could have its late reply taken by the new one; here, the held one's.
            let error = await #expect(throws: SocketIPCError.self) {
                try await connection.request(ByteBuffer(string: "release"))
            }
            #expect(error?.code == .connectionClosed, "\(String(describing: error))")
            #expect(error?.message.contains("2^32") == true, "\(String(describing: error))")
            // The request in flight still gets its own reply; then the connection, which went away, closes.
            held.reply.withLock { $0.take() }?.succeed(ByteBuffer(string: "the held one"))
            #expect(try await first.value == ByteBuffer(string: "the held one"))
            await connection.waitUntilClosed()
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

extension IDWraparoundTests {
    @Test("a ServiceClient whose connection has used all its call ids connects anew, and its calls go on there")
    func serviceClientConnectsAnew() async throws {
        // One store for the server's connections.
        let router = keyValueRouter()
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connections = Mutex<[Connection]>([])
            let client = ServiceClient(path: path) { connection in connections.withLock { $0.append(connection) } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.shutdown() }
                #expect(try await client.call(SetValue.self, .init(key: "colour", value: "blue")))
                // A stream that keeps the first connection open while it goes away (as a watch would, for ever).
                let (streaming, started) = AsyncStream.makeStream(of: Void.self)
                group.addTask {
                    _ = try? await client.bidirectionalStreaming(Echo.self) { writer, responses in
                        var iterator = responses.makeAsyncIterator()
                        try await writer.write(1)
                        _ = try await iterator.next()
                        started.yield()
                        while try await iterator.next() != nil {}
                    }
                }
                for await _ in streaming { break }
                let first = try #require(connections.withLock { $0.first })
                // The last id of this side's 2^31 is still fresh; then the ids are used up.
                first.calls.opened.store((1 << 31) - 1, ordering: .relaxed)
                #expect(try await client.call(SetValue.self, .init(key: "colour", value: "red")))
                // Before, every later call failed with connectionClosed on the first connection, going away and kept
                // open by the stream. It is closed now: the stream ends with it, as after a loss.
                #expect(try await client.call(Get.self, "colour") == "red")
                #expect(try await client.call(SetValue.self, .init(key: "colour", value: "green")))
                #expect(connections.withLock { $0.count } == 2)
                await first.waitUntilClosed()
                group.cancelAll()
            }
        }
    }
}
