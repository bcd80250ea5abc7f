import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `ServerConfiguration.writeTimeout`: a peer that reads none of the server's writes for that long has its connection
/// closed, as nginx's `send_timeout` does. The server stops reading from such a peer, so before, the connection
/// lasted for good: a review's peer passed its own end in a descriptors frame the server never read and exited, and
/// its connections held the server at its limit, every other user refused, until a restart.
@Suite("A peer that reads none of the server's writes", .timeLimit(.minutes(2)))
struct WriteTimeoutTests {
    @Test(
        "is closed once the write timeout passes (peerNotResponding), while another client is served",
        .enabled(if: runsOnLinux, "waits for the close with POLLRDHUP, which only Linux has")
    )
    func unreadWritesClose() async throws {
        let counter = RequestCounter()
        try await withFramedTestServer(
            configure: { $0.writeTimeout = .seconds(2) },
            makeHandler: { CountingEchoHandler(counter: counter) }
        ) { _, path in
            let payload = [UInt8](repeating: 0x61, count: 64 * 1024)
            var stream = helloBytes
            for id in 1...512 { stream += frameBytes(kind: 0x02, id: UInt32(id), payload: payload) }
            let hostile = try await RawSocket.connect(to: path)
            defer { hostile.close() }
            let taken = try await hostile.sendUntilStalled(stream)
            #expect(taken < stream.count, "the server stopped taking requests")
            // Meanwhile another client is served, and reads what it asked for.
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "next")) }
            #expect(String(buffer: reply) == "next")
            // Reading nothing until the server closes: before, it never did (the wait below ran out at 30 s).
            let closed = try await hostile.waitForCloseWithoutReading(upTo: 30_000)
            #expect(closed, "the server kept the connection whose peer reads nothing")
        }
    }

    @Test("a peer that reads slowly but steadily, taking the watermarks' 1 MiB gap within the timeout, is not closed")
    func slowSteadyReaderStays() async throws {
        let counter = RequestCounter()
        try await withFramedTestServer(
            configure: { $0.writeTimeout = .seconds(3) },
            makeHandler: { CountingEchoHandler(counter: counter) }
        ) { _, path in
            let payload = [UInt8](repeating: 0x62, count: 64 * 1024)
            var stream = helloBytes
            for id in 1...512 { stream += frameBytes(kind: 0x02, id: UInt32(id), payload: payload) }
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            // Requests until the server stops reading: its replies wait above the channel's high watermark.
            let taken = try await peer.sendUntilStalled(stream, stalledAfterMilliseconds: 300)
            #expect(taken < stream.count, "the server stopped taking requests")
            // Then 64 KiB every 100 ms, about 650 KB/s, for 6 s: the channel falls the 1 MiB from its high watermark to
            // its low one in under 2 s, within the 3 s write timeout, again and again.
            var received = 0
            for _ in 0..<60 {
                received += try await peer.read(exactly: 64 * 1024).count
                try await Task.sleep(for: .milliseconds(100))
            }
            // Still served: the rest of the requests, and every reply.
            let expected = 8 + 512 * (9 + payload.count)
            let rest = try await peer.send(Array(stream[taken...]), whileReading: expected - received)
            #expect(received + rest.count == expected)
            #expect(counter.received.load(ordering: .relaxed) == 512)
        }
    }
}

extension RawSocket {
    /// Waits, reading nothing, until the peer closes (POLLRDHUP) or `milliseconds` pass; whether it closed.
    fileprivate func waitForCloseWithoutReading(upTo milliseconds: Int32) async throws -> Bool {
        try await onOwnThread {
            var entry = pollfd(fd: self.descriptor, events: Int16(0x2000) /* POLLRDHUP */, revents: 0)
            return poll(&entry, 1, milliseconds) == 1 && entry.revents & Int16(0x2000) != 0
        }
    }
}
