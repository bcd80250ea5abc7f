import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A request waiting for its answer does not keep the read buffer it arrived in (found by a review: a peer that sent
/// each 10-byte request at the start of a read of its own, padded with replies to requests never made, which the
/// server drops, made the server hold 1 MiB per request: 800 MiB for 800 requests on 8 connections).
@Suite("Requests apart from their read buffers", .timeLimit(.minutes(2)), .limitedConcurrency)
struct PinnedReadBufferTests {
    @Test("requests read among large frames are handed out as copies, not as slices of 1 MiB read buffers")
    func requestsAreNotSlicesOfLargeReads() async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: (Reply, Int, Int).self)
        let total = 16
        try await withFramedTestServer(
            makeHandler: { StorageRecordingHandler(held: heldContinuation) }
        ) { _, path in
            // Each request comes after 1 MiB of replies to a request never made: the server's reads grow to 1 MiB,
            // and each request is a few bytes of one.
            let padding = frameBytes(kind: 0x03, id: 7777, payload: [UInt8](repeating: 0x70, count: 64 * 1024))
            var stream = helloBytes
            for id in 1...total {
                for _ in 0..<16 { stream += padding }
                stream += frameBytes(kind: 0x02, id: UInt32(id), payload: Array("request-\(id)".utf8))
            }
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.send(pieces: [stream])
            var replies: [Reply] = []
            var largest = 0
            for await (reply, length, storage) in held {
                largest = max(largest, storage - 2 * length)
                replies.append(reply)
                if replies.count == total { break }
            }
            #expect(largest <= 4096, "a request kept a read buffer of \(largest) bytes beyond twice its own")
            for reply in replies { reply.succeed(ByteBuffer(string: "ok")) }
            #expect(try await socket.read(exactly: 8 + total * (9 + 2)).count == 8 + total * 11)
        }
    }
}

extension PinnedReadBufferTests {
    @Test("replies a client waits for are handed out as copies, not as slices of 1 MiB read buffers")
    func repliesAreNotSlicesOfLargeReads() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/padded.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let connecting = Task { try await Client.connect(to: path) }
            let server = RawSocket(descriptor: try await acceptConnection(on: listener))
            defer { server.close() }
            try await server.write(callsPeerHelloBytes)
            #expect(try await server.read(exactly: 8).prefix(4) == [0x53, 0x49, 0x50, 0x43])
            let connection = try await connecting.value
            defer { connection.close() }
            // Each reply comes after 1 MiB of replies to a request never made, which the client drops: its reads grow
            // to 1 MiB, and each reply is a few bytes of one. A client keeps its replies (they are the results).
            let padding = frameBytes(kind: 0x03, id: 7777, payload: [UInt8](repeating: 0x70, count: 64 * 1024))
            var largest = 0
            for round in 1...8 {
                async let reply = connection.request(ByteBuffer(string: "r"))
                let request = try await server.read(exactly: 10)
                let id = request[5..<9].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                try await server.write(
                    Array(repeating: padding, count: 16).flatMap { $0 }
                        + frameBytes(kind: 0x03, id: id, payload: Array("reply-\(round)".utf8))
                )
                let received = try await reply
                #expect(String(buffer: received) == "reply-\(round)")
                largest = max(largest, received.storageCapacity - 2 * received.readableBytes)
            }
            #expect(largest <= 4096, "a reply kept a read buffer of \(largest) bytes beyond twice its own")
        }
    }
}

/// Hands every request's reply to the test with the request's size and the size of the storage it keeps.
private struct StorageRecordingHandler: ConnectionHandler, Sendable {
    let held: AsyncStream<(Reply, Int, Int)>.Continuation

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.held.yield((reply, request.readableBytes, request.storageCapacity))
    }
}
