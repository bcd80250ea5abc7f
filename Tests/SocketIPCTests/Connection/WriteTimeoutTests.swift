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
@Suite("A peer that reads none of the server's writes", .timeLimit(.minutes(3)))
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
            // The server stops reading only once its writes to this peer are above the channel's watermarks: a stall
            // of a second in a loaded run could be the server's slowness instead, after which it read the rest and
            // never became unwritable (a CI check: no close within 90 s); five seconds without progress is the stop.
            let taken = try await hostile.sendUntilStalled(stream, stalledAfterMilliseconds: 5000)
            #expect(taken < stream.count, "the server stopped taking requests")
            // Meanwhile another client is served, and reads what it asked for.
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "next")) }
            #expect(String(buffer: reply) == "next")
            // Reading nothing until the server closes: before, it never did. The wait is a safety net for a loaded
            // run (once, under another build's load, 30 s ran out), not a measure.
            let closed = try await hostile.waitForCloseWithoutReading(upTo: 90_000)
            #expect(closed, "the server kept the connection whose peer reads nothing")
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
