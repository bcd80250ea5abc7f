import NIOCore
import SocketIPCCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import Testing

@testable import SocketIPCRuntime

/// What a connection hands to its channel while the peer does not read: the channel's watermarks count the bytes of
/// the buffers it holds, not their capacity, so the connection must not hand it a buffer per flush.
@Suite("Channel writes while the peer does not read", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ChannelWriteTests {
    /// A raw peer of `server` that has done its hello and will read nothing more, and its connection on the server.
    static func silentPeer(of server: Server, at path: String) async throws -> (RawSocket, Connection) {
        let peer = try await RawSocket.connect(to: path)
        // The pong proves the server took the hello: the connection is listed.
        try await peer.write(callsPeerHelloBytes + frameBytes(kind: 0x0b, id: 1, payload: []))
        #expect(try await peer.read(exactly: 8 + 9) == serverHelloBytes + frameBytes(kind: 0x0c, id: 1, payload: []))
        return (peer, try #require(server.connections.first))
    }

    @Test("thousands of small flushes while the peer does not read: the channel holds one write, then 64 KiB chunks")
    func smallFlushesWhileThePeerDoesNotRead() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            let (peer, connection) = try await Self.silentPeer(of: server, at: path)
            defer { peer.close() }

            let pending = try await connection.eventLoop.submit {
                // 4 MiB the peer never reads: the socket takes what it can, the channel holds the rest.
                _ = try connection.queueMessage(ByteBuffer(repeating: 0x61, count: 4 << 20))
                connection.flushPendingWrites()
                let afterFirst = connection.state.withLock { $0.channelWritesPending }
                // Then 5,000 flushes of one 13-byte frame each, as a peer that pings and never reads causes.
                for index in 0..<5000 {
                    connection.queueCallControlFrame(id: 1, .credit(UInt32(index)))
                    connection.flushPendingWrites()
                }
                return (afterFirst, connection.state.withLock { ($0.channelWritesPending, $0.queuedBytes) })
            }.get()
            #expect(pending.0 == 1)
            // 65,000 bytes of small frames: still kept (below 64 KiB), not 5,000 buffers in the channel.
            #expect(pending.1.0 == 1)
            #expect(pending.1.1 == 5000 * 13)

            // Once the peer reads, everything arrives, in order: the kept frames go when the channel's write is done.
            let message = 4 << 20
            let received = try await peer.read(exactly: 4 + 1 + message + 5000 * 13)
            var expectedTail: [UInt8] = []
            for index in 0..<5000 {
                expectedTail += frameBytes(kind: 0x0a, id: 1, payload: withUnsafeBytes(of: UInt32(index).bigEndian, Array.init))
            }
            #expect(Array(received[(4 + 1 + message)...]) == expectedTail)
        }
    }

    @Test("frames kept while the channel held writes are not written once NIO has closed the socket, whose number may be another's")
    func keptFramesAfterTheSocketClosed() async throws {
        // Other tests run beside this one and open descriptors: one of them can take the freed number before the
        // test does. Such an attempt proves nothing, so the scenario runs again, on a new connection (rarely needed).
        var attempts = 0
        while try await !Self.keptFramesAfterTheSocketClosedOnce() {
            attempts += 1
            try #require(attempts < 5, "another thread took the freed number in each of \(attempts) attempts")
        }
    }

    /// One run of `keptFramesAfterTheSocketClosed`; returns whether the test's socket got the freed number (and so
    /// whether the run checked anything).
    static func keptFramesAfterTheSocketClosedOnce() async throws -> Bool {
        let reused = Mutex(false)
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            let (peer, connection) = try await Self.silentPeer(of: server, at: path)
            defer { peer.close() }
            let descriptor = try #require((connection.writer as? SocketFrameWriter)?.descriptor)
            // Stands for a socket that another thread opens and that gets the number NIO just freed.
            var pair: [Int32] = [-1, -1]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            let (other, otherPeer) = (pair[0], pair[1])
            defer { _ = close(other); _ = close(otherPeer) }
            try await connection.eventLoop.submit {
                let channel = connection.channel
                // 4 MiB the peer never reads: the channel holds what the socket does not take.
                _ = try connection.queueMessage(ByteBuffer(repeating: 0x61, count: 4 << 20))
                connection.flushPendingWrites()
                // A write of another handler, whose promise NIO fails on the close after it closed the socket and
                // before the connection's own pending write: there the number is given to the other socket.
                let promise = channel.eventLoop.makePromise(of: Void.self)
                promise.futureResult.whenComplete { _ in
                    let wasClosed = fcntl(descriptor, F_GETFD) == -1 && errno == EBADF
                    reused.withLock { $0 = wasClosed && dup2(other, descriptor) == descriptor }
                }
                channel.writeAndFlush(ByteBuffer(repeating: 0x62, count: 16), promise: promise)
                connection.writeThroughChannel(CollectionOfOne(ByteBuffer(repeating: 0x63, count: 16)))
                // A small frame, kept: the channel holds writes and less than 64 KiB is queued.
                connection.queueCallControlFrame(id: 1, .credit(7))
                connection.flushPendingWrites()
                #expect(connection.state.withLock { $0.queuedBytes } == 13)
                connection.abort()
            }.get()
            try await connection.channel.closeFuture.get()
            guard reused.withLock({ $0 }) else { return }
            // Nothing reached the socket that now has the number.
            var buffer = [UInt8](repeating: 0, count: 64)
            _ = fcntl(otherPeer, F_SETFL, fcntl(otherPeer, F_GETFL) | O_NONBLOCK)
            let got = read(otherPeer, &buffer, 64)
            #expect(got <= 0, "the connection wrote \(got) bytes to a descriptor number NIO had closed")
            // The duplicate the test made under NIO's old number.
            _ = close(descriptor)
        }
        return reused.withLock { $0 }
    }

    @Test("a peer that breaks the protocol while it reads nothing is closed after closeTimeout, its replies unwritten")
    func protocolErrorFromAPeerThatDoesNotRead() async throws {
        try await withFramedTestServer(
            configure: {
                $0.connection.closeTimeout = .milliseconds(200)
                // Small kernel buffers: the echoes wait in the channel, below the 2 MiB at which reading pauses.
                $0.connection.socketSendBufferSize = 4096
            },
            makeHandler: { EchoHandler() }
        ) { server, path in
            let (peer, connection) = try await Self.silentPeer(of: server, at: path)
            defer { peer.close() }
            var small: Int32 = 4096
            _ = setsockopt(peer.descriptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            // Requests whose echoes (1 MiB in all) the peer never reads, then a frame of an unknown kind.
            var attack: [UInt8] = []
            for id in 1...16 { attack += frameBytes(kind: 0x02, id: UInt32(id), payload: [UInt8](repeating: 0x61, count: 65_536)) }
            attack += [0x00, 0x00, 0x00, 0x01, 0x7f]
            try await peer.write(attack)
            // Before, the close waited for the going-away to be written, which a peer that does not read never lets
            // happen: the connection outlived every timeout.
            await connection.waitUntilClosed()
            #expect(connection.closeError?.code == .protocolViolation)
        }
    }
}
