import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// While a connection hands out no more requests (paused at `maximumConcurrentRequests`), the frames that let work in
/// progress finish still get through: call credit, pings and pongs, also behind frames that carry descriptors.
@Suite("Frames read while paused for requests", .timeLimit(.minutes(1)), .limitedConcurrency)
struct ReadWhilePausedTests {
    @Test("call credit is still read: a stream the peer reads goes on, and the request handler waiting for it answers")
    func creditWhilePaused() async throws {
        // Waited for by the one request; a stream's iteration ends when its task is cancelled, so that a broken
        // server still shuts down.
        let (finished, finish) = AsyncStream.makeStream(of: Void.self)
        var router = ServiceRouter()
        router.registerServerStreaming(Chunks.self) { count, writer, _ in
            for _ in 0..<count { try await writer.write(String(repeating: "c", count: 40 * 1024)) }
            finish.finish()
        }
        try await withFramedTestServer(
            configure: { $0.connection.maximumConcurrentRequests = 1 },
            makeHandler: { [router] in WaitingRequestsHandler(router: router, gate: finished) }
        ) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // A stream of ten messages of 40 KiB (two fill the call's window), then a request the handler answers only
            // once the stream is written: the connection is paused at it while the peer reads the stream and gives
            // credit. Held back with the request's pause, the credit never reached the stream, which never ended.
            try await peer.write(
                serverHelloBytes + callOpenBytes(id: 1, method: Chunks.name) + frameBytes(kind: 0x07, id: 1, payload: Array("10".utf8))
                    + frameBytes(kind: 0x08, id: 1, payload: [0, 0, 0, 0])
                    + frameBytes(kind: 0x02, id: 1, payload: Array("held".utf8))
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            var messages = 0
            var replied = false
            var ended = false
            while !(replied && ended) {
                for frame in try await peer.readFrames(1) {
                    switch (frame.kind, frame.id) {
                    case (0x07, 1):
                        messages += 1
                        try await peer.write(creditBytes(id: 1, increment: UInt32(9 + frame.payload.count)))
                    case (0x08, 1): ended = true
                    case (0x03, 1): replied = String(decoding: frame.payload, as: UTF8.self) == "held"
                    default: break
                    }
                }
            }
            #expect(messages == 10)
        }
    }

    @Test("pings behind a descriptors frame that is held are answered; the frame and its descriptors come after the pause")
    func pingsBehindHeldDescriptors() async throws {
        let handler = HoldingHandler()
        try await withFramedTestServer(
            configure: {
                $0.connection.maximumConcurrentRequests = 1
                $0.connection.maximumDescriptorsPerMessage = 4
            },
            makeHandler: { handler }
        ) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            _ = try await peer.read(exactly: 8)
            // A request the handler holds: the connection is paused. Then a message with a descriptor, held with its
            // descriptors frame, and a ping behind both. Before, the ping waited for the pause to end.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: Array("held".utf8)))
            let (readEnd, writeEnd) = try FileDescriptor.pipe()
            defer {
                try? readEnd.close()
                try? writeEnd.close()
            }
            let announce: [UInt8] = [0, 0, 0, 2, 0x0D, 1]
            var passed = readEnd.rawValue
            let sent = announce.withUnsafeBytes {
                csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &passed, 1)
            }
            #expect(sent == announce.count)
            try await peer.write(frameBytes(kind: 0x01, payload: Array("with a pipe".utf8)) + pingBytes(id: 9))
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 9, "\(pong)")
            #expect(handler.messages.load(ordering: .relaxed) == 0, "the message waits for the pause to end")
            // The answer ends the pause: the message comes, with its descriptor.
            handler.answer()
            let reply = try await peer.readFrames(1)
            #expect(reply.first?.kind == 0x03 && reply.first?.id == 1, "\(reply)")
            try await peer.write(pingBytes(id: 10))
            #expect(try await peer.readFrames(1).first?.id == 10)
            #expect(handler.messages.load(ordering: .relaxed) == 1)
            #expect(handler.descriptors.load(ordering: .relaxed) == 1)
        }
    }
}

private enum Chunks: ServiceMethod {
    static let name = "paused.chunks"
    typealias Request = Int
    typealias Response = String
}

/// Serves `router`'s calls, and answers its one request once `gate` ends.
private struct WaitingRequestsHandler: ConnectionHandler, Sendable {
    let services: ServiceConnectionHandler
    let gate: AsyncStream<Void>

    init(router: ServiceRouter, gate: AsyncStream<Void>) {
        self.services = ServiceConnectionHandler(router: router)
        self.gate = gate
    }

    func connectionDidOpen(_ connection: Connection) {
        self.services.connectionDidOpen(connection)
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.complete {
            for await _ in self.gate {}
            return request
        }
    }
}

/// Holds every request until ``answer()``; counts the messages and the descriptors that came with them.
private final class HoldingHandler: ConnectionHandler, Sendable {
    let messages = Atomic<Int>(0)
    let descriptors = Atomic<Int>(0)
    private let held = Mutex<[Reply]>([])

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.held.withLock { $0.append(reply) }
    }

    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        let taken = descriptors.take()
        self.descriptors.add(taken.count, ordering: .relaxed)
        for descriptor in taken { try? descriptor.close() }
        self.messages.add(1, ordering: .relaxed)
    }

    func answer() {
        for reply in self.held.withLock({ $0 }) { reply.succeed(ByteBuffer(string: "ok")) }
    }
}
