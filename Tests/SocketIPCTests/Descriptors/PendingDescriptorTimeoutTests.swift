import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Descriptors a peer passed and never lets a frame take do not keep its connection forever (D-Bus's CVE-2014-3637,
/// `pending_fd_timeout`; found by a review: a peer that passed its own end of the connection with a descriptors frame
/// and exited left a connection whose end-of-file never came, since the server held the last reference to the peer's
/// end; 138 of them filled its user's connection slots, with their 2 relay threads each, until the server stopped).
@Suite("Descriptors that wait for a frame", .timeLimit(.minutes(2)), .limitedConcurrency)
struct PendingDescriptorTimeoutTests {
    static func options() -> ConnectionOptions {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        options.pendingDescriptorTimeout = .milliseconds(200)
        return options
    }

    /// Connects a raw peer that passes descriptors (hello flags: calls, descriptors) and passes its own end of the
    /// connection with a descriptors frame announcing one, never followed by the frame that would take it.
    static func passOwnEnd(to path: String) async throws -> RawSocket {
        let peer = try await RawSocket.connect(to: path)
        try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
        _ = try await peer.read(exactly: 8)
        let frame: [UInt8] = [0, 0, 0, 2, 0x0D, 1]
        var own = peer.descriptor
        let sent = frame.withUnsafeBytes {
            csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &own, 1)
        }
        #expect(sent == frame.count)
        return peer
    }

    @Test("a peer that reads gets going-away 0x01 naming the limit, then the close")
    func peerIsToldWhy() async throws {
        try await withFramedTestServer(configure: { $0.connection = Self.options() }, makeHandler: { EchoHandler() }) {
            _, path in
            let peer = try await Self.passOwnEnd(to: path)
            defer { peer.close() }
            let received = try await peer.readUntilClosed()
            let last = RawFrame.parse(received).last
            #expect(last?.kind == 0x05 && last?.body.first == 0x01, "\(RawFrame.parse(received))")
            let text = String(decoding: last?.body.dropFirst() ?? [], as: UTF8.self)
            #expect(text.contains("pendingDescriptorTimeout"), "\(text)")
        }
    }

    @Test("a peer that passed its own end and closed its copy: the connection still ends, and the server forgets it")
    func ownEndDoesNotKeepTheConnection() async throws {
        try await withFramedTestServer(configure: { $0.connection = Self.options() }, makeHandler: { EchoHandler() }) {
            server, path in
            let peer = try await Self.passOwnEnd(to: path)
            #expect(await eventually { server.connections.count == 1 })
            // The peer is gone; only the server holds its end now, so no end-of-file can tell the server.
            peer.close()
            // Before, the connection stayed until the server stopped.
            #expect(await eventually { server.connections.isEmpty }, "\(server.connections.count) connection(s) left")
        }
    }

    @Test("descriptors that wait behind a request the handler has not answered do not count: the connection stays")
    func waitBehindTheHandlerDoesNotCount() async throws {
        var options = Self.options()
        options.maximumConcurrentRequests = 1
        let gate = HeldRequestGate()
        var configuration = ClientConfiguration()
        configuration.connection = options
        try await withFramedTestServer(
            configure: { $0.connection = options },
            makeHandler: { GatedHandler(gate: gate) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                async let held = connection.request(ByteBuffer(string: "held"))
                #expect(await eventually { gate.received.load(ordering: .relaxed) == 1 })
                // Reading is paused at the one unanswered request: the message's descriptors wait in the relay.
                let (readEnd, writeEnd) = try FileDescriptor.pipe()
                defer {
                    try? readEnd.close()
                    try? writeEnd.close()
                }
                try await connection.send(ByteBuffer(string: "with a descriptor"), descriptors: [readEnd])
                // Five of the 200 ms periods (at least two checks, unless the machine is slower than that). Before,
                // the second check closed the connection.
                try await Task.sleep(for: .seconds(1))
                gate.open()
                #expect(String(buffer: try await held) == "held")
                #expect(await eventually { gate.messages.load(ordering: .relaxed) == 1 }, "the message arrived")
                #expect(String(buffer: try await connection.request(ByteBuffer(string: "after"))) == "after")
            }
        }
    }
}

/// Holds the request "held" until ``open()``; answers the others at once; counts the messages.
private final class HeldRequestGate: Sendable {
    let received = Atomic<Int>(0)
    let messages = Atomic<Int>(0)
    private let waiting = Mutex<(isOpen: Bool, replies: [(Reply, ByteBuffer)])>((false, []))

    func hold(_ reply: Reply, _ request: ByteBuffer) {
        let now = self.waiting.withLock { state -> Bool in
            if state.isOpen { return true }
            state.replies.append((reply, request))
            return false
        }
        if now { reply.succeed(request) }
    }

    func open() {
        let replies = self.waiting.withLock { state in
            state.isOpen = true
            return state.replies
        }
        for (reply, request) in replies { reply.succeed(request) }
    }
}

private struct GatedHandler: ConnectionHandler, Sendable {
    let gate: HeldRequestGate

    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        descriptors.close()
        self.gate.messages.add(1, ordering: .relaxed)
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.gate.received.add(1, ordering: .relaxed)
        if String(buffer: request) == "held" {
            self.gate.hold(reply, request)
        } else {
            reply.succeed(request)
        }
    }
}
