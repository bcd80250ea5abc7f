import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import SystemPackage
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// While a connection hands out no more requests (paused at `maximumConcurrentRequests`), the frames that let work in
/// progress finish still get through: call credit, pings and pongs, also behind frames that carry descriptors.
// The time limit counts the wait for a place among the tests of limited concurrency, which a loaded run's long tests
// held for over a minute (a CI check under another build's load): a safety net, not a measure.
@Suite("Frames read while paused for requests", .timeLimit(.minutes(3)), .limitedConcurrency)
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
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Chunks.name) + frameBytes(kind: 0x07, id: 1, payload: Array("10".utf8))
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
        try await withPassingPeer(handler: handler) { peer, readEnd in
            // A request the handler holds: the connection is paused. Then a message with a descriptor, held with its
            // descriptors frame, and a ping behind both. Before, the ping waited for the pause to end.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: Array("held".utf8)))
            announce(1, of: readEnd, on: peer)
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

extension ReadWhilePausedTests {
    @Test("a reply with descriptors behind a held message with descriptors is handed out: the handler waiting for it answers")
    func replyWithDescriptorsBehindHeldOne() async throws {
        try await withPassingPeer(handler: CallingBackHandler()) { peer, readEnd in
            // A request the handler answers with the reply to its own request back to this peer (the connection is
            // paused at it), then a one-way message with a descriptor: held with its descriptors frame.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: Array("call me back".utf8)))
            announce(1, of: readEnd, on: peer)
            try await peer.write(frameBytes(kind: 0x01, payload: Array("a note".utf8)))
            var callback: UInt32?
            while callback == nil {
                for frame in try await peer.readFrames(1) where frame.kind == 0x02 { callback = frame.id }
            }
            // The answer to the callback, with a descriptor. Before, it was held behind the message, and the handler,
            // waiting for it, never answered: the pause never ended.
            announce(1, of: readEnd, on: peer)
            try await peer.write(frameBytes(kind: 0x03, id: callback!, payload: Array("here".utf8)))
            var answer: WireFrame?
            while answer == nil {
                for frame in try await peer.readFrames(1) where frame.kind == 0x03 && frame.id == 1 { answer = frame }
            }
            #expect(answer.map { String(decoding: $0.payload, as: UTF8.self) } == "here 1")
            // The held message comes after the pause, with its own descriptor.
            try await peer.write(pingBytes(id: 9))
            while try await peer.readFrames(1).first?.kind != 0x0c {}
        }
    }
}

extension ReadWhilePausedTests {
    @Test("a message with descriptors held, handed back when a pause ends and held again by the next pause, keeps its own descriptors; later ones keep theirs")
    func descriptorsHeldTwice() async throws {
        let handler = HoldingHandler()
        try await withPassingPeer(handler: handler) { peer, readEnd in
            // A descriptors frame announcing `count` descriptors (copies of the pipe's read end), then a message.
            func message(passing count: Int) async throws {
                announce(count, of: readEnd, on: peer)
                try await peer.write(frameBytes(kind: 0x01, payload: Array("with \(count)".utf8)))
            }
            // Request 1 pauses the connection; request 2 and a message with two descriptors are held behind it.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: Array("one".utf8)) + frameBytes(kind: 0x02, id: 2, payload: Array("two".utf8)))
            try await message(passing: 2)
            try await peer.write(pingBytes(id: 9))
            #expect(try await peer.readFrames(1).first?.id == 9)
            // Answering request 1 ends the pause; request 2, handed out again, pauses the connection before the
            // message, which is held a second time.
            handler.answer()
            var pongs = 0
            try await peer.write(pingBytes(id: 10))
            while pongs == 0 { pongs += try await peer.readFrames(1).filter { $0.kind == 0x0c }.count }
            #expect(handler.messages.load(ordering: .relaxed) == 0)
            // Request 2 reaches the handler once the event loop has ended the pause, which a pong does not show (pings
            // are answered while paused): under load, answering before it came answered nothing, and request 2 then
            // held the message for good (a loaded full run).
            #expect(await eventually { handler.heldCount == 1 })
            // Answering request 2 hands the message out with its two descriptors; a later one with one comes after.
            handler.answer()
            try await message(passing: 1)
            try await peer.write(pingBytes(id: 11))
            while try await peer.readFrames(1).first(where: { $0.kind == 0x0c })?.id != 11 {}
            // The answer ends the pause from the handler's task: under load the pong can come first (a CI run).
            #expect(await eventually { handler.messages.load(ordering: .relaxed) == 2 })
            #expect(handler.descriptorCounts.withLock { $0 } == [2, 1])
        }
    }
}

extension ReadWhilePausedTests {
    @Test("descriptors held while paused count against the relay's in-flight limit: a peer cannot make a paused connection hold more, and all come after the pause")
    func heldDescriptorsBounded() async throws {
        let handler = HoldingHandler()
        try await withPassingPeer(handler: handler) { peer, readEnd in
            // A request the handler holds pauses the connection. Then groups of a descriptors frame and an empty
            // message, one descriptor each, until the kernel pushes back. Before, each group was taken from the relay
            // and held, uncounted: a review's peer made one connection hold 19,960 descriptors, all the server had.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: Array("held".utf8)))
            let target = linkTarget(readEnd)
            let before = openCopies(of: target)
            let cap = 600
            let sent = try await onOwnThread { sendGroupsUntilStalled(peer.descriptor, passing: readEnd.rawValue, cap: cap) }
            let limit = DescriptorRelay.inFlightLimit(maximumPerMessage: 4)
            #expect(sent < cap, "the server took all \(sent) groups while paused")
            // Copies of the pipe's read end in this process: the server's (the peer's are in flight in the kernel).
            let held = openCopies(of: target) - before
            #expect(held <= limit + 4, "the paused connection holds \(held) descriptors (limit \(limit))")
            // The answer ends the pause: every group comes, in order, with its descriptor.
            handler.answer()
            try await onOwnThread { setBlocking(peer.descriptor) }
            try await peer.write(pingBytes(id: 9))
            while try await peer.readFrames(1).first(where: { $0.kind == 0x0c })?.id != 9 {}
            #expect(handler.messages.load(ordering: .relaxed) == sent)
            #expect(handler.descriptors.load(ordering: .relaxed) == sent)
        }
    }
}

/// Sends groups of a descriptors frame announcing one descriptor (`descriptor`, passed with it) and an empty message,
/// without blocking, until `cap` groups or until the socket has not become writable for a second (the kernel's
/// buffers are full: the server reads no more); returns how many groups went.
private func sendGroupsUntilStalled(_ socket: Int32, passing descriptor: Int32, cap: Int) -> Int {
    _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
    let group: [UInt8] = [0, 0, 0, 2, 0x0D, 1, 0, 0, 0, 1, 0x01]
    var passed = [descriptor]
    var sent = 0
    while sent < cap {
        let result = group.withUnsafeBytes {
            csocketipc_send_with_descriptors(socket, $0.baseAddress, UInt($0.count), &passed, 1)
        }
        if result == group.count {
            sent += 1
            continue
        }
        let code = errno
        guard result < 0, code == EAGAIN || code == EWOULDBLOCK else {
            Issue.record("sendmsg of a group returned \(result), errno \(code)")
            break
        }
        var waiting = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
        if poll(&waiting, 1, 1000) == 0 { break }
    }
    return sent
}

/// Makes `socket` blocking again.
private func setBlocking(_ socket: Int32) {
    _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) & ~O_NONBLOCK)
}

/// Answers each request with the reply to its own request back to the peer, and how many descriptors came with it.
private struct CallingBackHandler: ConnectionHandler, Sendable {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.complete {
            let (payload, descriptors) = try await connection.request(ByteBuffer(string: "callback"), descriptors: [])
            let taken = descriptors.take()
            for descriptor in taken { try? descriptor.close() }
            return ByteBuffer(string: "\(String(buffer: payload)) \(taken.count)")
        }
    }

    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        for descriptor in descriptors.take() { try? descriptor.close() }
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
    /// How many descriptors came with each message, in order.
    let descriptorCounts = Mutex<[Int]>([])
    private let held = Mutex<[Reply]>([])

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.held.withLock { $0.append(reply) }
    }

    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        let taken = descriptors.take()
        self.descriptors.add(taken.count, ordering: .relaxed)
        self.descriptorCounts.withLock { $0.append(taken.count) }
        for descriptor in taken { try? descriptor.close() }
        self.messages.add(1, ordering: .relaxed)
    }

    /// How many requests are held, unanswered.
    var heldCount: Int {
        self.held.withLock { $0.count }
    }

    /// Answers the requests held so far.
    func answer() {
        for reply in self.held.withLock({ held in
            defer { held = [] }
            return held
        }) {
            reply.succeed(ByteBuffer(string: "ok"))
        }
    }
}

/// Runs `body` against a server of `handler` that pauses at one unanswered request and passes descriptors, with a raw
/// peer that passes descriptors (hellos exchanged) and the read end of a pipe for it to pass.
private func withPassingPeer<Handler: ConnectionHandler & Sendable>(
    handler: Handler,
    _ body: (_ peer: RawSocket, _ readEnd: FileDescriptor) async throws -> Void
) async throws {
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
        let (readEnd, writeEnd) = try FileDescriptor.pipe()
        defer {
            try? readEnd.close()
            try? writeEnd.close()
        }
        try await body(peer, readEnd)
    }
}

/// Sends a descriptors frame announcing `count` descriptors, copies of `descriptor` passed with its bytes.
private func announce(_ count: Int, of descriptor: FileDescriptor, on peer: RawSocket) {
    let frame: [UInt8] = [0, 0, 0, 2, 0x0D, UInt8(count)]
    var passed = [Int32](repeating: descriptor.rawValue, count: count)
    let sent = frame.withUnsafeBytes {
        csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &passed, Int32(count))
    }
    #expect(sent == frame.count)
}
