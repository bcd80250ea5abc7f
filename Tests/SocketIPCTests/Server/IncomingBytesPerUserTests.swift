import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `ServerConfiguration.maximumIncomingBytesPerUser`: the frames one user's connections are gathering hold at most
/// that much together (before, each connection could hold one of up to the maximum message size: 300 connections
/// that each sent all but the last byte of a 16 MB request took a server to 4.6 GB).
@Suite("Incoming bytes per user", .timeLimit(.minutes(2)), .enabled(if: runsOnLinux, "needs Linux's SIOCOUTQ"))
struct IncomingBytesPerUserTests {
    static let limit = 1 << 20

    @Test("a connection whose frame would take its user over the limit is closed with resourceExhausted; the one already gathering finishes, and once it has, another large frame is taken")
    func connectionOverTheLimitClosed() async throws {
        try await withFramedTestServer(
            configure: { $0.maximumIncomingBytesPerUser = Self.limit },
            makeHandler: { AsyncRequestHandler { request, _ in request } }
        ) { _, path in
            let payload = [UInt8](repeating: 0x61, count: 800_000)
            let request = frameBytes(kind: 0x02, id: 1, payload: payload)
            // 700,000 bytes of an 800,000-byte request, all read by the server: held, and charged.
            let first = try await RawSocket.connect(to: path)
            defer { first.close() }
            try await first.write(helloBytes + request[..<700_000])
            #expect(try await first.read(exactly: 8) == serverHelloBytes)
            try await waitUntilRead(first)

            // Another connection of the same user, 400,000 bytes into a frame: 1.1 MB together, over 1 MiB.
            let second = try await RawSocket.connect(to: path)
            defer { second.close() }
            try await second.write(helloBytes + request[..<400_000])
            let refused = try await second.readUntilClosed()
            let frames = try parseFrames(refused.dropFirst(8))
            #expect(frames.count == 1 && frames.first?.kind == 0x05 && frames.first?.payload.first == 0x01, "\(frames)")
            let text = frames.first.map { String(decoding: $0.payload.dropFirst(), as: UTF8.self) } ?? ""
            #expect(text.contains("maximumIncomingBytesPerUser"), "\(text)")

            // The first finishes its frame and is answered.
            try await first.write(Array(request[700_000...]))
            let reply = try await first.read(exactly: request.count)
            #expect(reply.count == request.count && reply[4] == 0x03, "a reply")

            // Its charge is given back: a third connection's frame of 900,000 bytes is taken whole.
            let large = frameBytes(kind: 0x02, id: 7, payload: [UInt8](repeating: 0x62, count: 900_000))
            let third = try await RawSocket.connect(to: path)
            defer { third.close() }
            try await third.write(helloBytes + large)
            #expect(try await third.read(exactly: 8) == serverHelloBytes)
            let answer = try await third.read(exactly: large.count)
            #expect(answer.count == large.count && answer[4] == 0x03)
        }
    }

    @Test("the chunks of a streamed EOF-style message that its handler has not taken count: over the limit, the connection is closed, its handler's body throws resourceExhausted after the chunks read before, and the charge is held until the handler takes them")
    func streamedChunks() async throws {
        let limit = 1 << 20
        let (gate, opened) = AsyncStream.makeStream(of: Void.self)
        let (events, event) = AsyncStream.makeStream(of: String.self)
        // The handler keeps up with the first MiB (its reads grow), then stalls, as one forwarding to a slow sink
        // does, until the gate opens.
        let handler = EOFMessageHandler.streaming { body, _ in
            var taken = 0
            do {
                for try await chunk in body {
                    taken += chunk.readableBytes
                    if taken == limit {
                        event.yield("stalled")
                        for await _ in gate {}
                    }
                }
                event.yield("ended after \(taken) bytes")
            } catch let error as SocketIPCError {
                event.yield("\(error.code)")
            }
            return nil
        }
        try await withEOFTestServer(
            handler: handler,
            configure: {
                $0.maximumIncomingBytesPerUser = limit
                $0.handshakeTimeout = .seconds(120)
            }
        ) { server, path in
            var seen = events.makeAsyncIterator()
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            // A large socket buffer, so that the server's reads take large chunks (SO_SNDBUFFORCE as root; else
            // SO_SNDBUF, up to the system's maximum).
            var size: Int32 = 4 << 20
            if setsockopt(socket.descriptor, SOL_SOCKET, 32, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                setsockopt(socket.descriptor, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            try await socket.write([UInt8](repeating: 0x61, count: limit))
            #expect(await seen.next() == "stalled")
            // The handler took everything so far: nothing is charged. What comes now queues up ahead of it.
            #expect(server.incomingBytes.held(by: getuid()) == 0)
            let writer = Task { try? await socket.write([UInt8](repeating: 0x62, count: 16 << 20)) }
            defer { writer.cancel() }
            // The queue reaches the limit: the connection is closed, with nothing sent back.
            #expect(try await socket.readUntilClosed().isEmpty)
            // What is still queued stays charged while the stalled handler holds it: within the limit, and one
            // chunk (at most 1 MiB) beyond, as the first charge of a user always fits.
            let held = server.incomingBytes.held(by: getuid())
            #expect(held > 0 && held <= 2 * limit, "held \(held) bytes")
            opened.finish()
            #expect(await seen.next() == "resourceExhausted")
            #expect(server.incomingBytes.held(by: getuid()) == 0)
            await writer.value
        }
    }

    /// Waits until the server has read everything written on `socket` (`SIOCOUTQ`: for a Unix socket, the bytes
    /// written and not yet read by the peer). The condition ends the wait; 1,000 polls are a safety net.
    private func waitUntilRead(_ socket: RawSocket) async throws {
        for _ in 0..<1000 {
            var queued: Int32 = 0
            if ioctl(socket.descriptor, UInt(TIOCOUTQ), &queued) == 0, queued == 0 { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("the server never read what was written")
    }
}
