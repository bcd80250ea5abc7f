import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A hostile local peer against the services layer, byte by byte (PROTOCOL.md, "Calls"): the project's rule is that
/// one broken or hostile peer closes its own connection, never the server, never another peer's service; that no
/// buffer grows with what a peer merely claims or refuses to read; and that no write raises SIGPIPE. After every
/// attack another client is still served.
@Suite("Services: hostile peers", .timeLimit(.minutes(5)), .limitedConcurrency)
struct HostileCallTests {
    // MARK: - 1. Too many calls

    @Test("a peer opening 1000 blocking calls gets resourceExhausted for all beyond 100; never more than 100 handlers")
    func tooManyCalls() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            var attack = callsPeerHelloBytes
            for index in 0..<1000 {
                let id = UInt32(2 * index + 1)
                attack += callOpenBytes(id: id, method: Block.name) + messageBytes(id: id, json: "\"x\"") + callEndOKBytes(id: id)
            }
            try await peer.write(attack)
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let answers = try await peer.readFrames(900)
            let ends = answers.compactMap(CallEnd.init)
            #expect(ends.count == 900, "other frames: \(answers.filter { $0.kind != 0x08 }.count)")
            #expect(ends.allSatisfy { $0.status == 0x08 }, "statuses: \(Set(ends.map(\.status)))")
            let expectedIDs: [UInt32] = (100..<1000).map { UInt32(2 * $0 + 1) }
            let endIDs: [UInt32] = ends.map(\.id)
            #expect(endIDs == expectedIDs)

            // The 100 admitted handlers run; never more at once.
            var started = 0
            for await _ in gauge.started.stream {
                started += 1
                if started == 100 { break }
            }
            // A bounded wait that asserts an absence: no 101st handler starts, and nothing else comes.
            try await peer.write(pingBytes(id: 77))
            let rest = try await peer.readFrames(1)
            #expect(rest.first?.kind == 0x0c && rest.first?.id == 77)
            let quiet = try await peer.readAvailable(for: .milliseconds(300))
            #expect(quiet.bytes.isEmpty && !quiet.closed)
            #expect(gauge.peak.load(ordering: .relaxed) == 100)
            #expect(gauge.running.load(ordering: .relaxed) == 100)

            try await expectServed(path)

            // The peer vanishes: its 100 handlers are cancelled.
            closer.close()
            var ended = 0
            for await _ in gauge.ended.stream {
                ended += 1
                if ended == 100 { break }
            }
            #expect(gauge.running.load(ordering: .relaxed) == 0)
            try await expectServed(path)
        }
    }

    // MARK: - 2. A peer that never reads its answers

    @Test("a peer that never reads while sending unknown-method opens and pings is no longer read from")
    func neverReadingPeerIsStalled() async throws {
        // Each pair is answered by a call end (status 0x02, with a text) and a pong: more bytes out than in. Built
        // before the server starts and on a thread of its own: seconds of CPU in a debug build, which on Swift's
        // cooperative pool (a thread per core) would hold up every other test's tasks, and their peers' hellos.
        let attack = try await onOwnThread {
            var attack = callsPeerHelloBytes
            let pairs = 200_000
            attack.reserveCapacity(8 + pairs * 32)
            for index in 0..<pairs {
                attack.append(contentsOf: callOpenBytes(id: UInt32(2 * index + 1), method: "nope"))
                attack.append(contentsOf: pingBytes(id: UInt32(index)))
            }
            return attack
        }
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let sent = try await peer.sendUntilStalled(attack)
            // The server stopped reading: what it took is bounded by the sockets' buffers and its write queue, not by
            // what the peer sent.
            #expect(sent < attack.count, "the server read all \(attack.count) bytes of a peer that reads nothing")
            #expect(sent < 4 * 1024 * 1024, "the server took \(sent) bytes of a peer that reads nothing")

            try await expectServed(path)
        }
    }

    // MARK: - 3. Malformed call frames

    @Test(
        "a malformed call frame gets going-away 0x01 and the close; the server serves others",
        arguments: malformedFrames
    )
    func malformedCallFrame(name: String, frame: [UInt8]) async throws {
        try await withServiceTestServer(router: keyValueRouter(), configure: { $0.handshakeTimeout = .seconds(120) }) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(callsPeerHelloBytes + frame)
            let received = try await peer.readUntilClosed()
            #expect(Array(received.prefix(8)) == serverHelloBytes, "\(name)")
            try expectViolation(received.dropFirst(8), name)
            try await expectServed(path)
        }
    }

    @Test("an open reusing the id of a call still open is a protocol violation; the other calls' handlers are cancelled")
    func reusedOpenID() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Block.name) + messageBytes(id: 1, json: "\"x\"")
                    + callEndOKBytes(id: 1)
            )
            for await _ in gauge.started.stream { break }
            try await peer.write(callOpenBytes(id: 1, method: Get.name))
            let received = try await peer.readUntilClosed()
            #expect(Array(received.prefix(8)) == serverHelloBytes)
            try expectViolation(received.dropFirst(8), "reused id")
            for await _ in gauge.ended.stream { break }
            #expect(gauge.running.load(ordering: .relaxed) == 0)
            try await expectServed(path)
        }
    }

    @Test("frames for ids never opened (either parity) are ignored, and the connection goes on serving calls")
    func framesForUnknownIDsIgnored() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes
                    + messageBytes(id: 5, json: "1")
                    + callEndOKBytes(id: 7)
                    + frameBytes(kind: 0x08, id: 9, payload: [0x01, 0x01] + Array("e".utf8) + [0, 1] + Array("t".utf8) + [1, 2, 3])
                    + creditBytes(id: 11, increment: 0xFFFF_FFFF)
                    + cancelBytes(id: 13, reason: 0)
                    + messageBytes(id: 4, json: "1")
                    + callEndOKBytes(id: 6)
                    + creditBytes(id: 8, increment: 1)
                    + cancelBytes(id: 10, reason: 0xff)
                    + frameBytes(kind: 0x0c, id: 12345, payload: [])  // a pong for a ping never sent
                    + pingBytes(id: 3)
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 3, "got \(pong)")

            // A real call on the same connection.
            try await peer.write(
                callOpenBytes(id: 15, method: Get.name) + messageBytes(id: 15, json: "\"a\"") + callEndOKBytes(id: 15)
            )
            let answer = try await peer.readFrames(2)
            #expect(answer.map(\.kind) == [0x07, 0x08])
            #expect(answer.first?.payload == Array("null".utf8))
            #expect(answer.last.flatMap(CallEnd.init)?.status == 0x00)
            try await expectServed(path)
        }
    }

    // MARK: - 4. A server stream nobody reads

    @Test("a server stream whose peer never reads nor gives credit stops after one window of 64 KiB")
    func serverStreamStopsAfterOneWindow() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            // What the handler may send on 65,536 bytes of credit: messages while the credit is above zero, each
            // costing its frame's bytes (9 + the JSON of the number).
            var credit = 65_536
            var expectedMessages = 0
            while credit > 0 {
                credit -= 9 + String(expectedMessages).utf8.count
                expectedMessages += 1
            }
            let expectedBytes = 65_536 - credit

            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Count.name) + messageBytes(id: 1, json: "100000000")
                    + callEndOKBytes(id: 1)
            )
            for await written in gauge.writes.stream where written >= expectedMessages { break }
            // A bounded wait that asserts an absence: the handler writes nothing more.
            try await Task.sleep(for: .milliseconds(500))
            #expect(gauge.written.load(ordering: .relaxed) == expectedMessages)

            // Everything that was sent: the window, and nothing more.
            let received = try await peer.read(exactly: 8 + expectedBytes)
            #expect(received.count == 8 + expectedBytes)
            let quiet = try await peer.readAvailable(for: .milliseconds(300))
            #expect(quiet.bytes.isEmpty && !quiet.closed, "\(quiet.bytes.count) bytes beyond the window")

            // Credit resumes it.
            try await peer.write(creditBytes(id: 1, increment: 1000))
            let more = try await peer.readFrames(1)
            #expect(more.first?.kind == 0x07)

            try await expectServed(path)
            closer.close()
            for await _ in gauge.ended.stream { break }
            try await expectServed(path)
        }
    }

    @Test("a peer that opens 40 server streams of 1 MiB messages and reads nothing: the server queues at most its watermark and one message")
    func unreadStreamsQueueOneMessage() async throws {
        let gauge = HandlerGauge()
        let served = Mutex<Connection?>(nil)
        var router = keyValueRouter()
        router.registerServerStreaming(Big.self) { size, writer, context in
            served.withLock { $0 = context.connection }
            gauge.start()
            defer { gauge.end() }
            // One message above the starting credit of 64 KiB: credit lets it through, the write queue must not.
            try await writer.write(String(repeating: "a", count: size))
            gauge.wrote()
            try await Task.sleep(for: .seconds(3600))
        }
        try await withServiceTestServer(router: router) { _, path in
            let calls = 40
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            var bytes = callsPeerHelloBytes
            for index in 0..<calls {
                let id = UInt32(2 * index + 1)
                bytes += callOpenBytes(id: id, method: Big.name) + messageBytes(id: id, json: "1048576")
                    + callEndOKBytes(id: id)
            }
            try await peer.write(bytes)
            var started = 0
            for await _ in gauge.started.stream {
                started += 1
                if started == calls { break }
            }
            // A bounded wait that asserts an absence: the handlers that could queue have queued.
            try await Task.sleep(for: .milliseconds(500))
            let connection = try #require(served.withLock { $0 })
            // What the server holds for this peer: its own queue, and what it handed to the channel (SwiftNIO's
            // pending writes, which the flush fills in chunks of 64 KiB and more).
            let queued = connection.state.withLock { $0.queuedBytes }
            let handed = try await connection.channel.getOption(ChannelOptions.bufferedWritableBytes).get()
            let limit = connection.options.writeBufferHighWatermark + 2 * 1024 * 1024 + 1_048_576 + 1024
            #expect(queued + handed <= limit, "\(queued) bytes queued and \(handed) handed to the channel")
            #expect(gauge.written.load(ordering: .relaxed) < calls / 4, "handlers that queued their message")
            try await expectServed(path)
        }
    }

    @Test("a server stream whose peer grants all the credit there is and reads as fast as it comes leaves the other connections served, on every event loop")
    func unlimitedCreditLeavesOthersServed() async throws {
        let gauge = HandlerGauge()
        var router = keyValueRouter()
        router.registerServerStreaming(Forever.self) { _, writer, _ in
            gauge.start()
            defer { gauge.end() }
            var number = 0
            while true {
                try await writer.write(number)
                number += 1
            }
        }
        try await withServiceTestServer(router: router) { _, path in
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Forever.name) + messageBytes(id: 1, json: "0")
                    + callEndOKBytes(id: 1) + creditBytes(id: 1, increment: UInt32(Int32.max) - 65_536)
            )
            // Read everything as it comes, on a thread of its own; say once when the first MiB is in.
            let (flowing, flowingContinuation) = AsyncStream.makeStream(of: Void.self)
            let descriptor = peer.descriptor
            let reading = Task {
                try await onOwnThread {
                    var total = 0
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let got = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                        if got < 0 && errno == EINTR { continue }
                        if got <= 0 { break }
                        if total < 1_048_576 && total + got >= 1_048_576 { flowingContinuation.yield() }
                        total += got
                    }
                    flowingContinuation.finish()
                }
            }
            for await _ in flowing { break }
            // Connections are spread over the event loops in turn: twice as many as there are cores reach the
            // stream's loop at least once. Each is served while the stream goes on.
            for _ in 0..<(2 * System.coreCount) { try await expectServed(path) }
            #expect(gauge.running.load(ordering: .relaxed) == 1, "the stream still runs")
            // Wake the reading thread (a close alone would not end its `recv`), then close once it is done.
            shutdown(descriptor, Int32(SHUT_RDWR))
            _ = try? await reading.value
            closer.close()
            for await _ in gauge.ended.stream { break }
        }
    }

    @Test("many streams on one loop whose peer grants all the credit there is and reads as fast as it comes share the loop's turns: each one's run between two polls shrinks to its share, so the others wait no longer than for one")
    func manyUnlimitedStreamsShareTheLoop() async throws {
        var router = keyValueRouter()
        router.registerServerStreaming(Forever.self) { _, writer, _ in
            var number = 0
            while true {
                try await writer.write(number)
                number += 1
            }
        }
        try await withServiceTestServer(router: router) { _, path in
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            // Eight streams of one connection, on one loop, each with all the credit there is.
            let streams = 8
            var opening = callsPeerHelloBytes
            for index in 0..<streams {
                let id = UInt32(2 * index + 1)
                opening += callOpenBytes(id: id, method: Forever.name) + messageBytes(id: id, json: "0")
                    + callEndOKBytes(id: id) + creditBytes(id: id, increment: UInt32(Int32.max) - 65_536)
            }
            try await peer.write(opening)
            // A run is the messages of one call that follow one another on the wire: what its handler sent between
            // two turns of the loop. The first runs come before the streams have waited for a turn together.
            let skipped = 2 * streams * 1024
            let measured = 2 * streams * 1024
            let descriptor = peer.descriptor
            let runs = try await onOwnThread { () -> [Int] in
                var bytes: [UInt8] = []
                var offset = 8  // the server's hello
                var seen = 0
                var runs: [Int] = []
                var current: (id: UInt32, count: Int)? = nil
                var chunk = [UInt8](repeating: 0, count: 65536)
                while seen < skipped + measured {
                    let got = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                    if got < 0 && errno == EINTR { continue }
                    guard got > 0 else { break }
                    bytes += chunk[..<got]
                    while bytes.count - offset >= 9 {
                        let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
                        guard bytes.count - offset >= 4 + length else { break }
                        let kind = bytes[offset + 4]
                        let id = bytes[offset + 5..<offset + 9].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                        offset += 4 + length
                        guard kind == 0x07 else { continue }
                        seen += 1
                        if let run = current, run.id == id {
                            current = (id, run.count + 1)
                        } else {
                            if let run = current, seen > skipped { runs.append(run.count) }
                            current = (id, 1)
                        }
                    }
                    bytes.removeFirst(offset)
                    offset = 0
                }
                return runs
            }
            // Alone, a stream's run is 1,024 messages; shared by eight, about 128.
            let longest = runs.max() ?? 0
            #expect(runs.count > 4 * streams, "\(runs.count) runs")
            #expect(longest <= 1024 / 4, "the longest run took \(longest) messages; runs: \(runs.prefix(32))")
            try await expectServed(path)
        }
    }

    @Test("a large request is decoded away from the event loop: while its decoding takes its time, the loop's other connections are served")
    func largeRequestDecodedOffTheLoop() async throws {
        let gate = DecodingGate()
        var router = keyValueRouter(codec: GatedCodec(gate: gate))
        router.register(Measure.self) { text, _ in text.utf8.count }
        try await withServiceTestServer(router: router) { _, path in
            let client = try await Client.connect(to: path)
            defer { client.close() }
            // 100 KB, whose decoding waits for the gate (at most 30 s): as a costly decoding would take its time.
            async let measured = client.call(Measure.self, String(repeating: "x", count: 100_000))
            for await _ in gate.decoding { break }
            // Connections are spread over the event loops in turn: twice as many as there are cores reach the large
            // call's loop at least once. Before, the one there waited for the decoding.
            for _ in 0..<(2 * System.coreCount) { try await expectServed(path) }
            gate.release()
            #expect(try await measured == 100_000)
        }
    }

    @Test("method names are matched byte for byte: a canonically equivalent name, or one that is not UTF-8, is unknown (0x02)")
    func methodNamesMatchedByteForByte() async throws {
        var router = keyValueRouter()
        router.register(Accented.self) { _, _ in "served" }
        try await withServiceTestServer(router: router) { _, path in
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            func call(id: UInt32, name: [UInt8]) -> [UInt8] {
                let open = [0] + [UInt8](repeating: 0, count: 8) + [UInt8(name.count)] + name
                return frameBytes(kind: 0x06, id: id, payload: open) + messageBytes(id: id, json: "\"x\"")
                    + callEndOKBytes(id: id)
            }
            try await peer.write(
                callsPeerHelloBytes
                    + call(id: 1, name: Array("caf\u{E9}".utf8))  // as registered: U+00E9
                    + call(id: 3, name: Array("cafe\u{301}".utf8))  // e and U+0301: equal as Swift Strings
                    + call(id: 5, name: Array(Get.name.utf8) + [0xFF])  // not UTF-8, "kv.get\u{FFFD}" once repaired
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // The refusals go out as the opens are read, the answer once its handler has run.
            let frames = try await peer.readFrames(4)
            let answer = frames.filter { $0.kind == 0x07 }
            #expect(answer.map(\.id) == [1] && answer.first?.payload == Array("\"served\"".utf8), "\(frames)")
            let ends = frames.compactMap(CallEnd.init).sorted { $0.id < $1.id }
            #expect(ends.map(\.id) == [1, 3, 5] && ends.map(\.status) == [0x00, 0x02, 0x02], "\(frames)")
            let refusal = frames.first { $0.kind == 0x08 && $0.id == 5 }
            let text = String(decoding: refusal?.payload.dropFirst(4) ?? [], as: UTF8.self)
            #expect(text.contains("(not UTF-8)"), "\(text)")
            try await expectServed(path)
        }
    }

    @Test("two canonically equivalent names are two methods, each with its own handler")
    func canonicallyEquivalentNamesAreTwoMethods() async throws {
        var router = keyValueRouter()
        router.register(Accented.self) { _, _ in "composed" }
        router.register(AccentedDecomposed.self) { _, _ in "decomposed" }
        #expect(router.methods.filter { $0.hasPrefix("caf") }.count == 2)
        try await withServiceTestServer(router: router) { _, path in
            let client = try await Client.connect(to: path)
            defer { client.close() }
            #expect(try await client.call(Accented.self, "x") == "composed")
            #expect(try await client.call(AccentedDecomposed.self, "x") == "decomposed")
        }
    }

    // MARK: - 5. Messages beyond credit

    @Test("a 16 MiB message to a client stream is taken on positive credit; the next before any credit is a violation")
    func largeMessagesBeyondCredit() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let big = [UInt8](repeating: 0x31, count: 16 * 1024 * 1024)
            try await peer.write(callsPeerHelloBytes + callOpenBytes(id: 1, method: "hostile.hold") + frameBytes(kind: 0x07, id: 1, payload: big) + pingBytes(id: 9))
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 9, "the first message is within credit: \(pong)")

            // The server may see the violation in the frame's header and close before the peer has written the rest:
            // then the write fails with EPIPE or ECONNRESET, and what the server sent before its close is still read.
            do {
                try await peer.write(frameBytes(kind: 0x07, id: 1, payload: big))
            } catch RawSocketError.failed(_, let code) where code == EPIPE || code == ECONNRESET {}
            let received = try await peer.readUntilClosed()
            try expectViolation(received[...], "second 16 MiB message")
            for await _ in gauge.ended.stream { break }
            try await expectServed(path)
        }
    }

    @Test(
        "credit that would take a call's window above 2^31 - 1 bytes is a violation (RFC 9113, 6.9.1), at once or summed",
        arguments: [[0x7FFF_FFFF], [0x7FFF_0000, 0xFFFF], [UInt32.max]] as [[UInt32]]
    )
    func creditBeyondTheMaximumWindow(increments: [UInt32]) async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // The handler's direction starts with 65,536 bytes of credit; it writes nothing while it holds.
            var attack = callsPeerHelloBytes + callOpenBytes(id: 1, method: "hostile.hold")
            for increment in increments { attack += creditBytes(id: 1, increment: increment) }
            try await peer.write(attack)
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            try expectViolation(try await peer.readUntilClosed()[...], "credit \(increments)")
            try await expectServed(path)
        }
    }

    @Test("a message one byte above the maximum is refused before it is read: going-away and the close")
    func messageAboveMaximum() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // Only the header: the length claims 16 MiB + 1 of payload, which never comes.
            let length = UInt32(5 + 16 * 1024 * 1024 + 1)
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Sum.name) + withUnsafeBytes(of: length.bigEndian) { Array($0) }
                    + [0x07, 0, 0, 0, 1]
            )
            let received = try await peer.readUntilClosed()
            #expect(Array(received.prefix(8)) == serverHelloBytes)
            let frames = try parseFrames(received.dropFirst(8))
            #expect(frames.count == 1 && frames.first?.kind == 0x05, "got \(frames)")
            try await expectServed(path)
        }
    }

    // MARK: - 6. Cancels

    @Test("cancels for ids never opened, of either parity, are ignored; a cancel with an unknown reason cancels")
    func cancels() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes + cancelBytes(id: 1, reason: 0) + cancelBytes(id: 2, reason: 0)
                    + cancelBytes(id: 0, reason: 1) + cancelBytes(id: 0xFFFF_FFFF, reason: 0)
                    + callOpenBytes(id: 3, method: Block.name) + messageBytes(id: 3, json: "\"x\"") + callEndOKBytes(id: 3)
            )
            for await _ in gauge.started.stream { break }
            try await peer.write(cancelBytes(id: 3, reason: 0xee) + cancelBytes(id: 3, reason: 0) + pingBytes(id: 5))
            for await _ in gauge.ended.stream { break }
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // The handler's side sends nothing more for a cancelled call: only the pong.
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 5, "got \(pong)")
            let quiet = try await peer.readAvailable(for: .milliseconds(300))
            #expect(quiet.bytes.isEmpty && !quiet.closed, "got \(quiet)")
            try await expectServed(path)
        }
    }

    @Test("a caller's cancel whose reason is its deadline stops the handler, and nothing more is sent for the call")
    func cancelForDeadline() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Block.name) + messageBytes(id: 1, json: "\"x\"")
                    + callEndOKBytes(id: 1)
            )
            for await _ in gauge.started.stream { break }
            try await peer.write(cancelBytes(id: 1, reason: 0x01) + pingBytes(id: 3))
            for await _ in gauge.ended.stream { break }
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // Only the pong: no end frame ("the call's deadline passed") for a call its caller gave up.
            let pong = try await peer.readFrames(1)
            #expect(pong.first?.kind == 0x0c && pong.first?.id == 3, "got \(pong)")
            let quiet = try await peer.readAvailable(for: .milliseconds(300))
            #expect(quiet.bytes.isEmpty && !quiet.closed, "got \(quiet)")
            try await expectServed(path)
        }
    }

    // MARK: - 7. A peer that vanishes

    @Test(
        "a peer that vanishes mid-stream: the handler is cancelled, nothing crashes",
        arguments: ["server stream blocked on credit", "server stream still writing", "client stream waiting for a message"]
    )
    func vanishingPeer(situation: String) async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            let closer = PeerCloser(peer)
            defer { closer.close() }
            switch situation {
            case "server stream blocked on credit":
                try await peer.write(
                    callsPeerHelloBytes + callOpenBytes(id: 1, method: "hostile.forever") + messageBytes(id: 1, json: "0")
                        + callEndOKBytes(id: 1)
                )
                for await written in gauge.writes.stream where written > 3000 { break }
            case "server stream still writing":
                // The peer gives lots of credit and reads a little: the handler is writing when it vanishes.
                try await peer.write(
                    callsPeerHelloBytes + callOpenBytes(id: 1, method: "hostile.forever") + messageBytes(id: 1, json: "0")
                        + callEndOKBytes(id: 1) + creditBytes(id: 1, increment: 0x7FFE_0000)
                )
                _ = try await peer.read(exactly: 8 + 4096)
            default:
                try await peer.write(
                    callsPeerHelloBytes + callOpenBytes(id: 1, method: Sum.name) + messageBytes(id: 1, json: "1")
                )
                for await _ in gauge.started.stream { break }
            }
            closer.close()
            for await _ in gauge.ended.stream { break }
            #expect(gauge.running.load(ordering: .relaxed) == 0)
            try await expectServed(path)
        }
    }

    @Test("unary calls whose caller never half-closes are answered once their request is in, not held with it")
    func unaryCallsWithoutHalfClose() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // 100 calls, each with a 1 MiB request and no half-close: before, each handler kept its request while
            // it waited for the half-close, as long as the peer liked (100 MiB here, 1.6 GiB at the maximum size).
            let request = "\"" + String(repeating: "k", count: 1 << 20) + "\""
            var attack = callsPeerHelloBytes
            for index in 0..<100 {
                let id = UInt32(2 * index + 1)
                attack += callOpenBytes(id: id, method: Get.name) + messageBytes(id: id, json: request)
            }
            // The answers are small (about 3 KB in all): the socket's buffer holds them while the requests go.
            try await peer.write(attack)
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            // Per call: credit for the request read, the response, the end.
            let frames = try await peer.readFrames(300)
            let ends = frames.compactMap(CallEnd.init)
            #expect(ends.count == 100 && ends.allSatisfy { $0.status == 0x00 }, "\(ends.count) ends")
            // The late half-closes are ignored: the calls are over, and the connection goes on.
            var halfCloses: [UInt8] = []
            for index in 0..<100 { halfCloses += callEndOKBytes(id: UInt32(2 * index + 1)) }
            try await peer.write(halfCloses + frameBytes(kind: 0x0b, id: 7, payload: []))
            #expect(try await peer.readFrames(1).first?.kind == 0x0c)
            try await expectServed(path)
        }
    }

    @Test("a client-streaming call whose deadline passed before its handler starts ends with 0x04; the handler never runs")
    func expiredStreamingCallRunsNoHandler() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Sum.name, timeoutNanoseconds: 1)
                    + messageBytes(id: 1, json: "1") + callEndOKBytes(id: 1)
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let end = try await peer.readFrames(1)
            #expect(end.map(\.kind) == [0x08] && end.first.flatMap(CallEnd.init)?.status == 0x04, "got \(end)")
            #expect(gauge.peak.load(ordering: .relaxed) == 0, "the handler ran")
            try await expectServed(path)
        }
    }

    @Test("a unary call with two requests in one write ends with invalid message; a later one is dropped as it arrives")
    func twoRequestsToAUnaryMethod() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes + callOpenBytes(id: 1, method: Get.name) + messageBytes(id: 1, json: "\"a\"")
                    + messageBytes(id: 1, json: "\"b\"") + callEndOKBytes(id: 1)
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let end = try await peer.readFrames(1)
            #expect(end.first.flatMap(CallEnd.init)?.status == 0x05, "got \(end)")

            // A blocked handler with its request in: later messages (1 MiB each, within credit) are dropped as they
            // arrive, not kept for the handler's life; the call still answers a cancel, and the connection serves.
            try await peer.write(callOpenBytes(id: 3, method: Block.name) + messageBytes(id: 3, json: "\"x\""))
            for await _ in gauge.started.stream { break }
            let junk = "\"" + String(repeating: "j", count: 1 << 20) + "\""
            try await peer.write(messageBytes(id: 3, json: junk) + frameBytes(kind: 0x0b, id: 9, payload: []))
            #expect(try await peer.readFrames(1).first?.kind == 0x0c)
            try await peer.write(frameBytes(kind: 0x09, id: 3, payload: [0x00]))
            for await _ in gauge.ended.stream { break }
            try await expectServed(path)
        }
    }

    // MARK: - 8. Deadlines at the extremes

    @Test("an open with the largest timeout is served; one with a 1 ns timeout ends with deadline exceeded, even for a handler that would answer at once")
    func extremeTimeouts() async throws {
        let gauge = HandlerGauge()
        try await withServiceTestServer(router: hostileRouter(gauge: gauge)) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            try await peer.write(
                callsPeerHelloBytes
                    + callOpenBytes(id: 1, method: Get.name, timeoutNanoseconds: .max) + messageBytes(id: 1, json: "\"a\"")
                    + callEndOKBytes(id: 1)
            )
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            let answer = try await peer.readFrames(2)
            #expect(answer.map(\.kind) == [0x07, 0x08])
            #expect(answer.last.flatMap(CallEnd.init)?.status == 0x00)

            try await peer.write(
                callOpenBytes(id: 3, method: Block.name, timeoutNanoseconds: 1) + messageBytes(id: 3, json: "\"x\"")
                    + callEndOKBytes(id: 3)
            )
            let end = try await peer.readFrames(1)
            #expect(end.first.flatMap(CallEnd.init)?.status == 0x04, "got \(end)")

            // A handler that would answer at once does not run once the deadline passed: no response, status 0x04.
            try await peer.write(
                callOpenBytes(id: 5, method: Get.name, timeoutNanoseconds: 1) + messageBytes(id: 5, json: "\"a\"")
                    + callEndOKBytes(id: 5)
            )
            let expired = try await peer.readFrames(1)
            #expect(expired.map(\.kind) == [0x08], "got \(expired)")
            #expect(expired.first.flatMap(CallEnd.init)?.status == 0x04, "got \(expired)")
            try await expectServed(path)
        }
    }
}

// MARK: - The router under attack

/// Counts the hostile router's handlers: how many run, the most at once, and what they wrote.
private final class HandlerGauge: Sendable {
    let running = Atomic<Int>(0)
    let peak = Atomic<Int>(0)
    let written = Atomic<Int>(0)
    let started = AsyncStream<Void>.makeStream()
    let ended = AsyncStream<Void>.makeStream()
    let writes = AsyncStream<Int>.makeStream()

    func start() {
        let now = self.running.add(1, ordering: .relaxed).newValue
        var peak = self.peak.load(ordering: .relaxed)
        while now > peak {
            let (exchanged, original) = self.peak.compareExchange(expected: peak, desired: now, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
        self.started.continuation.yield()
    }

    func end() {
        self.running.subtract(1, ordering: .relaxed)
        self.ended.continuation.yield()
    }

    func wrote() {
        self.writes.continuation.yield(self.written.add(1, ordering: .relaxed).newValue)
    }
}

private enum Hold: ServiceMethod {
    static let name = "hostile.hold"
    typealias Request = Int
    typealias Response = Int
}

private enum Big: ServiceMethod {
    static let name = "hostile.big"
    typealias Request = Int
    typealias Response = String
}

private enum Forever: ServiceMethod {
    static let name = "hostile.forever"
    typealias Request = Int
    typealias Response = Int
}

/// A method whose name is not ASCII: `café` with a precomposed `é` (U+00E9).
private enum Accented: ServiceMethod {
    static let name = "caf\u{E9}"
    typealias Request = String
    typealias Response = String
}

/// ``Accented``'s name with `e` and a combining acute accent (U+0301): canonically equivalent, other bytes.
private enum AccentedDecomposed: ServiceMethod {
    static let name = "cafe\u{301}"
    typealias Request = String
    typealias Response = String
}

/// A unary method that answers the size of its request in bytes.
private enum Measure: ServiceMethod {
    static let name = "hostile.measure"
    typealias Request = String
    typealias Response = Int
}

/// Holds the decoding of large messages (64 KiB and more) in ``GatedCodec`` until ``release()``, and says when one
/// started.
private final class DecodingGate: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let started: AsyncStream<Void>.Continuation
    let decoding: AsyncStream<Void>

    init() {
        (self.decoding, self.started) = AsyncStream.makeStream(of: Void.self)
    }

    /// Called by the decoding thread: blocks it until ``release()``, or at most 30 s.
    func hold() {
        self.started.yield()
        _ = self.semaphore.wait(timeout: .now() + 30)
    }

    func release() {
        self.semaphore.signal()
    }
}

/// JSON, but a message of 64 KiB or more is decoded only once its ``DecodingGate`` lets it: a decoding that takes
/// its time, as one of a hostile shape does.
private struct GatedCodec: MessageCodec {
    let gate: DecodingGate
    let json = JSONCodec()

    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        try self.json.encode(value)
    }

    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        if buffer.readableBytes >= 64 * 1024 { self.gate.hold() }
        return try self.json.decode(type, from: buffer)
    }
}

/// The key-value router, with its blocking, streaming and client-streaming handlers counted by `gauge`.
private func hostileRouter(gauge: HandlerGauge) -> ServiceRouter {
    var router = keyValueRouter()
    router.register(Block.self) { request, _ in
        gauge.start()
        defer { gauge.end() }
        try await Task.sleep(for: .seconds(3600))
        return request
    }
    router.registerServerStreaming(Count.self) { count, writer, _ in
        gauge.start()
        defer { gauge.end() }
        for number in 0..<count {
            try await writer.write(number)
            gauge.wrote()
        }
    }
    router.registerServerStreaming(Forever.self) { _, writer, _ in
        gauge.start()
        defer { gauge.end() }
        var number = 0
        while true {
            try await writer.write(number)
            gauge.wrote()
            number += 1
        }
    }
    router.registerClientStreaming(Sum.self) { numbers, _ in
        gauge.start()
        defer { gauge.end() }
        var sum = 0
        for try await number in numbers { sum += number }
        return sum
    }
    // Reads nothing: its messages stay where the server keeps them.
    router.registerClientStreaming(Hold.self) { _, _ in
        gauge.start()
        defer { gauge.end() }
        try await Task.sleep(for: .seconds(3600))
        return 0
    }
    return router
}

/// Another client, on a connection of its own, is served.
private func expectServed(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let client = try await Client.connect(to: path)
    defer { client.close() }
    let key = "k\(UInt32.random(in: 0...UInt32.max))"
    #expect(try await client.call(SetValue.self, .init(key: key, value: "v")), sourceLocation: sourceLocation)
    #expect(try await client.call(Get.self, key) == "v", sourceLocation: sourceLocation)
}

/// Closes a raw socket once, however often asked (a descriptor closed twice may close another thread's).
private final class PeerCloser: Sendable {
    let peer: RawSocket
    let closed = Atomic<Bool>(false)
    init(_ peer: RawSocket) { self.peer = peer }
    func close() {
        if !self.closed.exchange(true, ordering: .relaxed) { self.peer.close() }
    }
}

// MARK: - Frames

/// Expects `bytes` (all after the hello until the close) to be one going-away frame with reason 0x01.
private func expectViolation(
    _ bytes: ArraySlice<UInt8>,
    _ name: String,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let frames = try parseFrames(bytes)
    try #require(frames.count == 1, "\(name): expected one going-away frame, got \(frames)", sourceLocation: sourceLocation)
    #expect(frames[0].kind == 0x05 && frames[0].payload.first == 0x01, "\(name): \(frames)", sourceLocation: sourceLocation)
}

/// Malformed call frames, each after a calls hello, and what they break.
private let malformedFrames: [(String, [UInt8])] = [
    ("open: name length overruns the frame", frameBytes(kind: 0x06, id: 1, payload: openPayload(nameLength: 10, name: "ab"))),
    ("open: name shorter than the frame", frameBytes(kind: 0x06, id: 1, payload: openPayload(nameLength: 1, name: "ab"))),
    ("open: payload shorter than its fixed fields", frameBytes(kind: 0x06, id: 1, payload: [0, 0, 0, 0, 0])),
    ("open: an even id (the server's numbering)", frameBytes(kind: 0x06, id: 2, payload: openPayload(nameLength: 6, name: "kv.get"))),
    ("open: id 0", frameBytes(kind: 0x06, id: 0, payload: openPayload(nameLength: 6, name: "kv.get"))),
    ("end: text length overruns the frame", frameBytes(kind: 0x08, id: 1, payload: [0x00, 0x00, 0xff, 0xff, 0x78])),
    ("end: code length overruns the frame", frameBytes(kind: 0x08, id: 1, payload: [0x01, 0x0a, 0x61])),
    ("end: empty payload", frameBytes(kind: 0x08, id: 1, payload: [])),
    ("credit: 3 bytes", frameBytes(kind: 0x0a, id: 1, payload: [0, 0, 1])),
    ("credit: 5 bytes", frameBytes(kind: 0x0a, id: 1, payload: [0, 0, 0, 0, 1])),
    ("cancel: 2 bytes", frameBytes(kind: 0x09, id: 1, payload: [0, 0])),
    ("cancel: empty payload", frameBytes(kind: 0x09, id: 1, payload: [])),
    ("a call frame too short for its id", [0, 0, 0, 3, 0x07, 0, 0]),
    ("an unknown kind 0x0d", frameBytes(kind: 0x0d, id: 1, payload: [])),
]

private func openPayload(nameLength: UInt8, name: String) -> [UInt8] {
    var payload: [UInt8] = [0]
    payload += u64(0)
    payload.append(nameLength)
    payload += Array(name.utf8)
    return payload
}

private func u64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }

