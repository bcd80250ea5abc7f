import CSocketIPCLinux
import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SystemPackage
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// swift-system's descriptor (NIOCore has a protocol of the same name).
private typealias FileDescriptor = SystemPackage.FileDescriptor

/// Passing file descriptors (`SCM_RIGHTS`) with messages, requests and replies, and what a hostile peer can do with
/// them: every descriptor it passes is closed when its connection fails, and nothing else is hurt. Descriptor leaks
/// are found in `/proc/self/fd` (client and server share this process) by what each descriptor is.
@Suite("Passing descriptors", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct DescriptorPassingTests {
    static func options(_ maximum: Int = 4) -> ConnectionOptions {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = maximum
        return options
    }

    static func clientConfiguration(_ maximum: Int = 4) -> ClientConfiguration {
        var configuration = ClientConfiguration()
        configuration.connection = Self.options(maximum)
        return configuration
    }

    @Test("a message carries a pipe's write end: the server writes through it, and the client reads what it wrote")
    func messageWithPipe() async throws {
        // The event loops and their pollers open descriptors of their own on first use.
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            try await Client.withConnection(to: path) { _ = try await $0.request(ByteBuffer(string: "warm up")) }
        }
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { WritingHandler() }
        ) { _, path in
            let connection = try await Client.connect(to: path, configuration: Self.clientConfiguration())
            #expect(connection.passesDescriptors)
            let (readEnd, writeEnd) = try FileDescriptor.pipe()
            let pipe = linkTarget(readEnd)
            // Each end is closed exactly once: a second close could close another test's descriptor of the same
            // number, in this process of concurrent tests.
            do {
                try await connection.send(ByteBuffer(string: "hello through the pipe"), descriptors: [writeEnd])
            } catch {
                try? readEnd.close()
                try? writeEnd.close()
                throw error
            }
            // The connection sent a duplicate: the caller's own may be closed at once.
            try writeEnd.close()
            // The server writes the message into the pipe and closes its copy: EOF once every copy is closed.
            let text: String
            do {
                text = try readAll(readEnd)
            } catch {
                try? readEnd.close()
                throw error
            }
            #expect(text == "hello through the pipe")
            connection.close()
            await connection.waitUntilClosed()
            try readEnd.close()
            #expect(await openCopiesOnceClosed(of: pipe) == 0, "every copy of the pipe is closed")
        }
    }

    @Test("a request carries a file and the reply carries another: each side reads the file the other opened")
    func requestAndReplyWithFiles() async throws {
        let directory = try TemporaryDirectory()
        let served = directory.path + "/served.txt"
        try "the server's file".write(toFile: served, atomically: true, encoding: .utf8)
        let sent = directory.path + "/sent.txt"
        try "the client's file".write(toFile: sent, atomically: true, encoding: .utf8)
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { FileServingHandler(path: served) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                let file = try FileDescriptor.open(sent, .readOnly)
                defer { try? file.close() }
                let (payload, descriptors) = try await connection.request(
                    ByteBuffer(string: "read mine, send yours"),
                    descriptors: [file]
                )
                #expect(String(buffer: payload) == "the client's file")
                let received = descriptors.take()
                #expect(received.count == 1)
                for descriptor in received {
                    defer { try? descriptor.close() }
                    #expect(try readAll(descriptor) == "the server's file")
                }
                // A request without descriptors may still get some back.
                let (_, more) = try await connection.request(ByteBuffer(string: "no file"), descriptors: [])
                #expect(more.count == 1)
            }
        }
        // The server stopped and the client's connection closed: no copy of either file is left open.
        #expect(await openCopiesOnceClosed(of: served) == 0)
        #expect(await openCopiesOnceClosed(of: sent) == 0)
    }

    /// One user's connections share its account of descriptors received and not yet taken (1,024 pause its reads).
    /// A message's descriptors, once its descriptors frame is decoded, must not stay counted while the rest of the
    /// message needs more reads: 10 connections each in the middle of a request of 250 KB with 128 descriptors would
    /// then pause each other for good (found by a review of a version that counted them until the message was whole:
    /// this test's writes of the rest then time out).
    @Test(
        "ten connections of one user, each in the middle of a request of 250 KB with 128 descriptors, are all answered",
        .enabled(if: openFileHardLimitAtLeast(16_384), "needs 16 connections of 643 descriptors each (RLIMIT_NOFILE)")
    )
    func manyConnectionsOfOneUserInTheMiddle() async throws {
        try await withFramedTestServer(
            configure: {
                $0.connection = Self.options(128)
                $0.maximumConnections = 16
                $0.maximumConnectionsPerUser = 16
            },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let (readEnd, writeEnd) = try FileDescriptor.pipe()
            defer {
                try? readEnd.close()
                try? writeEnd.close()
            }
            let payload = [UInt8](repeating: 0x61, count: 250_000)
            let request = frameBytes(kind: 0x02, id: 1, payload: payload)
            let start = [0, 0, 0, 2, 0x0D, 128] + request.prefix(1_000)
            var peers: [RawSocket] = []
            defer { for peer in peers { peer.close() } }
            for _ in 0..<10 {
                let peer = try await RawSocket.connect(to: path)
                peers.append(peer)
                var limit = timeval(tv_sec: 20, tv_usec: 0)
                setsockopt(peer.descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(peer.descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
                #expect(try await peer.read(exactly: 8).count == 8)
            }
            // Every connection first passes its descriptors and the start of its request ...
            for peer in peers {
                var descriptors = [Int32](repeating: readEnd.rawValue, count: 128)
                let sent = start.withUnsafeBytes {
                    csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &descriptors, 128)
                }
                #expect(sent == start.count)
            }
            // ... then the rest, and reads the echo.
            for peer in peers {
                try await peer.write(Array(request.dropFirst(1_000)))
                let reply = try await peer.read(exactly: request.count)
                #expect(reply.count == request.count && reply[4] == 0x03 && reply.dropFirst(9).elementsEqual(payload))
            }
        }
    }

    @Test("descriptors that a handler does not take are closed, and so are those a plain request's reply brings")
    func untakenAreClosed() async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { EchoHandler() }  // knows nothing of descriptors: the defaults close them
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                let (readEnd, writeEnd) = try FileDescriptor.pipe()
                defer {
                    try? readEnd.close()
                    try? writeEnd.close()
                }
                let pipe = linkTarget(readEnd)
                defer { #expect(openCopies(of: pipe) == 2, "only the test's own two ends are open") }
                for index in 0..<50 {
                    try await connection.send(ByteBuffer(string: "m\(index)"), descriptors: [readEnd, writeEnd])
                }
                let (reply, descriptors) = try await connection.request(ByteBuffer(string: "echo"), descriptors: [readEnd])
                #expect(String(buffer: reply) == "echo")
                #expect(descriptors.isEmpty)
                // A request's answer comes after the messages before it: the server has closed what they carried.
                #expect(openCopies(of: pipe) == 2)
            }
        }
    }

    @Test(
        "payloads above the threshold travel in sealed shared memory and arrive whole: message, request and reply",
        arguments: [256 * 1024, 1024 * 1024 + 7, 4 * 1024 * 1024]
    )
    func sharedPayloads(size: Int) async throws {
        let (received, receivedContinuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { RecordingEchoHandler(messages: receivedContinuation) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                // A pattern that differs at every offset of a page, so that a misplaced page would show.
                let pattern = (0..<4099).map { UInt8(truncatingIfNeeded: $0 &* 31) }
                var payload = ByteBuffer()
                while payload.readableBytes < size {
                    payload.writeBytes(pattern.prefix(size - payload.readableBytes))
                }
                try await connection.send(payload)
                var messages = received.makeAsyncIterator()
                let message = try #require(await messages.next())
                #expect(message == payload, "the message arrived whole")
                // The reply (the echo) is as large: it travels in shared memory too.
                let reply = try await connection.request(payload)
                #expect(reply == payload, "the request and its reply arrived whole")
            }
        }
    }

    @Test("a peer that leaves shared payloads unread gets no more of them beyond the limit: the next payloads go through the socket, where the write watermark holds them, until it has read everything")
    func unreadSharedPayloadsBounded() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/raw.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            // A raw server that passes descriptors and takes shared payloads (hello flags 0x07), and reads when told.
            let accepting = Task { () -> RawSocket in
                let peer = try await RawSocket.accepting(on: listener)
                try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x07, 0x00, 0x00])
                return peer
            }
            var configuration = Self.clientConfiguration()
            // The limit of unread shared memory is the larger of the maximum message and the watermark: 256 KiB here.
            configuration.connection.maximumMessageSize = 200 * 1024
            configuration.connection.sharedPayloadThreshold = 64 * 1024
            let connection = try await Client.connect(to: path, configuration: configuration)
            defer { connection.abort() }
            let peer = try await accepting.value
            defer { peer.close() }
            #expect(try await peer.read(exactly: 8).count == 8, "the client's hello")
            /// The kinds of the frames of `count` payloads (a descriptors frame and its shared payload frame count as
            /// one payload), read whole.
            func kinds(ofPayloads count: Int) async throws -> [UInt8] {
                var kinds: [UInt8] = []
                while kinds.filter({ $0 != 0x0D }).count < count {
                    let length = try await peer.read(exactly: 4).reduce(0) { $0 << 8 | Int($1) }
                    kinds.append(try await peer.read(exactly: length)[0])
                }
                return kinds
            }
            let payload = ByteBuffer(repeating: 0x61, count: 150 * 1024)
            // Nothing is read meanwhile: the first goes in shared memory, the second would pass the limit.
            try await connection.send(payload)
            try await connection.send(payload)
            #expect(try await kinds(ofPayloads: 2) == [0x0D, 0x0E, 0x01], "before, both were shared")
            // Once the peer has read everything, shared memory again.
            let relay = try #require(connection.descriptorPassing?.relay)
            #expect(await eventually { relay.reserveSharedMemory(0, limit: 0) }, "the count starts again")
            try await connection.send(payload)
            #expect(try await kinds(ofPayloads: 1) == [0x0D, 0x0E])
        }
    }

    /// How many messages ``TurnMarkingHandler`` got, and how many had been handed out when its loop ran the task it
    /// queued at the first.
    final class TurnMarks: Sendable {
        let received = Atomic<Int>(0)
        let seenByTheLoop = Atomic<Int>(0)
    }

    /// Counts the messages it gets; at the first, queues a task on its event loop that notes how many had been handed
    /// out by the time the loop ran its other work.
    struct TurnMarkingHandler: ConnectionHandler {
        let marks: TurnMarks

        func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
            let count = self.marks.received.add(1, ordering: .relaxed).newValue
            guard count == 1 else { return }
            let marks = self.marks
            connection.eventLoop.execute {
                marks.seenByTheLoop.store(marks.received.load(ordering: .relaxed), ordering: .relaxed)
            }
        }
    }

    /// A raw peer of the server at `path` that passes descriptors and shared payloads (hello flags `0x07`), with one
    /// sealed memfd of 1 MiB of its own, for the length of `body`; `body` gets the socket and a function that sends
    /// the descriptors frame of one shared message (the memfd again) before the bytes it is given, which must start
    /// with that message's `0x0E` frame. The socket is the test's to close.
    ///
    /// `sparse`: the memfd is only truncated to its size, not written, so that none of its pages are allocated;
    /// `blocksPastTheEnd`: and as many blocks are allocated past its end (`FALLOC_FL_KEEP_SIZE`), which count in
    /// `st_blocks` too.
    func withSharingPeer(
        at path: String,
        sparse: Bool = false,
        blocksPastTheEnd: Bool = false,
        _ body: (RawSocket, _ sendShared: ([UInt8]) async throws -> Void) async throws -> Void
    ) async throws {
        let memory = csocketipc_memfd_create("test-payload")
        try #require(memory >= 0)
        defer { close(memory) }
        if sparse {
            try #require(ftruncate(memory, 1 << 20) == 0)
            if blocksPastTheEnd {
                // fallocate(2) with FALLOC_FL_KEEP_SIZE (1); Swift's Glibc module does not declare it.
                typealias Fallocate = @convention(c) (Int32, Int32, Int, Int) -> Int32
                let symbol = try #require(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fallocate"))
                let fallocate = unsafeBitCast(symbol, to: Fallocate.self)
                try #require(fallocate(memory, 1, 1 << 20, 1 << 20) == 0)
            }
        } else {
            let bytes = [UInt8](repeating: 0x6D, count: 1 << 20)
            try #require(bytes.withUnsafeBytes { write(memory, $0.baseAddress, $0.count) } == 1 << 20)
        }
        try #require(csocketipc_seal_all(memory) == 0)
        let socket = try await RawSocket.connect(to: path)
        try await socket.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x07, 0x00, 0x00])
        #expect(try await socket.read(exactly: 8).count == 8)
        try await body(socket) { following in
            let announce: [UInt8] = [0, 0, 0, 2, 0x0D, 1]
            var descriptor = memory
            let sent = announce.withUnsafeBytes {
                csocketipc_send_with_descriptors(socket.descriptor, $0.baseAddress, UInt($0.count), &descriptor, 1)
            }
            try #require(sent == announce.count)
            try await socket.write(following)
        }
    }

    /// Frame `0x0E` of a one-way message (`0x01`, id 0) of 1 MiB in shared memory.
    static let sharedMessageFrame: [UInt8] = [0, 0, 0, 14, 0x0E, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]

    @Test("messages in shared memory are handed out one per turn of the event loop: frames of a few bytes, each standing for megabytes to map and copy, do not hold the loop for all of them at once")
    func sharedPayloadsYieldTheLoop() async throws {
        let marks = TurnMarks()
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { TurnMarkingHandler(marks: marks) }
        ) { _, path in
            // One sealed memfd of 1 MiB, passed 20 times: each frame costs the peer 20 bytes.
            try await self.withSharingPeer(at: path) { socket, sendShared in
                defer { socket.close() }
                for _ in 0..<20 { try await sendShared(Self.sharedMessageFrame) }
                #expect(await eventually { marks.received.load(ordering: .relaxed) == 20 }, "all 20 arrive")
                // Before, every message of the read (up to all 20) was handed out before the loop's next task.
                #expect(marks.seenByTheLoop.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("frames after a message in shared memory are handed out even when the peer closes right after them", arguments: 0..<5)
    func framesAfterASharedPayloadBeforeTheClose(round: Int) async throws {
        let marks = TurnMarks()
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { TurnMarkingHandler(marks: marks) }
        ) { _, path in
            try await self.withSharingPeer(at: path) { socket, sendShared in
                // The shared message, two plain ones in the same write, and the close.
                try await sendShared(
                    Self.sharedMessageFrame
                        + frameBytes(kind: 0x01, payload: Array("tail a".utf8))
                        + frameBytes(kind: 0x01, payload: Array("tail b".utf8))
                )
                socket.close()
                // Before, the two plain messages were dropped with the connection most of the time.
                #expect(
                    await eventually { marks.received.load(ordering: .relaxed) == 3 },
                    "\(marks.received.load(ordering: .relaxed)) of 3"
                )
            }
        }
    }

    @Test(
        "a sparse memfd (truncated to its size, never written; also with as many blocks allocated past its end) is refused before it is read: going-away 0x01 saying so",
        arguments: [false, true]
    )
    func sparseSharedPayloadRefused(blocksPastTheEnd: Bool) async throws {
        let marks = TurnMarks()
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { TurnMarkingHandler(marks: marks) }
        ) { _, path in
            try await self.withSharingPeer(at: path, sparse: true, blocksPastTheEnd: blocksPastTheEnd) {
                socket, sendShared in
                defer { socket.close() }
                try await sendShared(Self.sharedMessageFrame)
                // Before, the server mapped it and its copy allocated the 1 MiB of pages, charged to the server.
                let answer = try await socket.readToEnd()
                let text = String(decoding: answer, as: UTF8.self)
                #expect(answer.starts(with: [0, 0, 0]) && answer.count > 6 && answer[4] == 0x05 && answer[5] == 0x01)
                #expect(text.contains("is sparse"), "\(text)")
                #expect(marks.received.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("a peer without descriptor passing: sending descriptors fails with invalidState, and plain messages work")
    func peerWithout() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                #expect(!connection.passesDescriptors)
                let (readEnd, writeEnd) = try FileDescriptor.pipe()
                defer {
                    try? readEnd.close()
                    try? writeEnd.close()
                }
                let error = await #expect(throws: SocketIPCError.self) {
                    try await connection.send(ByteBuffer(string: "x"), descriptors: [readEnd])
                }
                #expect(error?.code == .invalidState)
                let reply = try await connection.request(ByteBuffer(string: "plain"))
                #expect(String(buffer: reply) == "plain")
            }
        }
    }

    @Test("more descriptors than the maximum are refused before anything is sent")
    func tooMany() async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options(2) },
            makeHandler: { EchoHandler() }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration(2)) { connection in
                let (readEnd, writeEnd) = try FileDescriptor.pipe()
                defer {
                    try? readEnd.close()
                    try? writeEnd.close()
                }
                let error = await #expect(throws: SocketIPCError.self) {
                    try await connection.send(ByteBuffer(string: "x"), descriptors: [readEnd, writeEnd, readEnd])
                }
                #expect(error?.code == .invalidConfiguration)
                #expect(connection.isOpen)
            }
        }
    }

    /// What a hostile peer sends after its hello (flags: calls and descriptors), with the descriptors attached to its
    /// first byte; the server must close the connection, close every descriptor it got, and go on serving others.
    @Test(
        "a hostile peer's descriptors are closed with its connection",
        arguments: [
            ("descriptors without a descriptors frame", [0, 0, 0, 1, 0x01], 2),
            ("a descriptors frame announcing more than passed", [0, 0, 0, 2, 0x0D, 3, 0, 0, 0, 1, 0x01], 2),
            ("more descriptors than the maximum", [0, 0, 0, 2, 0x0D, 4, 0, 0, 0, 1, 0x01], 4),
            ("a descriptors frame before a going-away", [0, 0, 0, 2, 0x0D, 1, 0, 0, 0, 2, 0x05, 0], 1),
            ("a message cut off after its descriptors", [0, 0, 0, 2, 0x0D, 1, 0, 0, 0, 9, 0x01, 0x61], 1),
        ] as [(String, [UInt8], Int)]
    )
    func hostilePeer(_ what: String, frames: [UInt8], passing count: Int) async throws {
        let pipe = try await withFramedTestServer(
            configure: { $0.connection = Self.options(2) },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            // The server's hello first: until it has admitted the peer, the connection refuses descriptors
            // (SO_PASSRIGHTS, DescriptorRefusalTests), and an honest peer waits for it anyway.
            #expect(try await socket.read(exactly: 8).count == 8)
            let (readEnd, writeEnd) = try FileDescriptor.pipe()
            let pipe = linkTarget(readEnd)
            let passed = Array(repeating: readEnd.rawValue, count: count)
            let sent = passed.withUnsafeBufferPointer { descriptors in
                frames.withUnsafeBytes {
                    csocketipc_send_with_descriptors(
                        socket.descriptor, $0.baseAddress, UInt($0.count), descriptors.baseAddress, Int32(count)
                    )
                }
            }
            #expect(sent == frames.count)
            try readEnd.close()
            try writeEnd.close()
            // Abrupt end for the cut-off message: the peer goes away in the middle of it.
            if what.contains("cut off") { shutdown(socket.descriptor, Int32(SHUT_WR)) }
            let received = try await socket.readUntilClosed()
            if !what.contains("cut off") && !what.contains("going-away") {
                // A violation: the peer hears why (going-away 0x01) before the close.
                let frames = RawFrame.parse(received)
                #expect(frames.last?.kind == 0x05 && frames.last?.body.first == 0x01, "\(what): \(frames)")
            }
            // The server still serves another peer.
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration(2)) { connection in
                let reply = try await connection.request(ByteBuffer(string: "still here"))
                #expect(String(buffer: reply) == "still here")
            }
            return pipe
        }
        // Every descriptor the hostile peer passed is closed (at the latest with its connection; the server has
        // stopped now, which waits for every connection's close).
        #expect(await openCopiesOnceClosed(of: pipe) == 0)
    }
}

/// Records each one-way message and echoes each request.
private struct RecordingEchoHandler: ConnectionHandler {
    let messages: AsyncStream<ByteBuffer>.Continuation

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.messages.yield(message)
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

/// Writes each message it gets into the first descriptor that came with it.
private struct WritingHandler: ConnectionHandler {
    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        for descriptor in descriptors.take() {
            _ = try? descriptor.writeAll(message.readableBytesView)
            try? descriptor.close()
        }
    }
}

/// Answers a request with the text of the file that came with it (if any), passing its own file back.
private struct FileServingHandler: ConnectionHandler {
    let path: String

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.answer(text: "", reply: reply)
    }

    func didReceiveRequest(
        _ request: ByteBuffer,
        descriptors: ReceivedDescriptors,
        reply: Reply,
        on connection: Connection
    ) {
        var text = ""
        for descriptor in descriptors.take() {
            text += (try? readAll(descriptor)) ?? "unreadable"
            try? descriptor.close()
        }
        self.answer(text: text, reply: reply)
    }

    private func answer(text: String, reply: Reply) {
        guard let file = try? FileDescriptor.open(self.path, .readOnly) else {
            reply.fail(SocketIPCError(.remoteError, "cannot open \(self.path)"))
            return
        }
        defer { try? file.close() }
        reply.succeed(ByteBuffer(string: text), descriptors: [file])
    }
}




/// A temporary directory, removed when released.
private final class TemporaryDirectory {
    let path: String
    init() throws {
        self.path = FileManager.default.temporaryDirectory.appendingPathComponent("socketipc-fd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}
