import CSocketIPCLinux
import Logging
import NIOCore
import NIOEmbedded
@testable import SocketIPCRuntime
import SocketIPCTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a connection that passes descriptors registers for the peer after its relay stopped sending: its replies'
/// descriptors, the memory of their shared payloads. Found by a fuzzing review: peers that pipelined requests answered
/// with shared payloads and closed left a server 800 memfds in 1,000 connections, until it could accept no one.
@Suite("A stopped descriptor relay keeps nothing", .timeLimit(.minutes(1)))
struct StoppedRelayTests {
    @Test("descriptors registered after the peer left and the relay's threads ended, before the channel's close reached the relay, are closed at once; no shared memory is reserved")
    func registeredAfterThreadsEnded() async throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let relay = try DescriptorRelay(socket: pair[0], maximumPerMessage: 4, passedBy: nil, logger: Logger(label: "test"))
        // The peer leaves; the channel closes its end, as SwiftNIO does before the close reaches the relay
        // (channelClosed), while the connection's handlers may still answer.
        close(pair[1])
        close(relay.channelSide)
        await relay.waitUntilFinished()
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]) }
        relay.registerOutgoing([ends[1]])
        // The relay owns the write end from now on: closed, the read end sees the end of the stream at once. Before,
        // it was kept for good (the poll waited out its 10 s).
        var ready = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
        let polled = poll(&ready, 1, 10_000)
        #expect(polled == 1)
        var byte: UInt8 = 0
        if polled == 1 { #expect(read(ends[0], &byte, 1) == 0) }
        #expect(!relay.reserveSharedMemory(1 << 20, limit: 16 << 20), "no memory for a peer that will never read it")
    }

    /// An echo server whose replies of 64 KiB or more go in shared memory, to peers that take descriptors.
    private static func withEchoServerSharingPayloads(
        _ body: (Server, String) async throws -> Void
    ) async throws {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        options.sharedPayloadThreshold = 64 * 1024
        try await withFramedTestServer(configure: { $0.connection = options }, makeHandler: { EchoHandler() }, body)
    }

    @Test("a server's connection whose peer keeps shared payloads unread in its socket holds its slot (its relay) after the close, until the peer reads or closes (found by a review: 640 MiB pinned through 40 connections against a limit of 4 per user)")
    func closedConnectionHoldsSlotWhilePeerHoldsSharedMemory() async throws {
        try await Self.withEchoServerSharingPayloads { server, path in
            let peer = try await RawSocket.connect(to: path)
            var peerOpen = true
            defer { if peerOpen { peer.close() } }
            // Hello: calls, descriptors, shared payloads.
            try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x07, 0x00, 0x00])
            _ = try await peer.read(exactly: 8)
            // A request the server echoes in shared memory; the reply waits in the peer's socket, unread.
            try await peer.write(frameBytes(kind: 0x02, id: 1, payload: [UInt8](repeating: 0x61, count: 100 * 1024)))
            var readable = pollfd(fd: peer.descriptor, events: Int16(POLLIN), revents: 0)
            #expect(poll(&readable, 1, 30_000) == 1, "the reply came")
            // The peer half-closes: the server closes the connection, and its relay shuts the socket down (both
            // directions shut: POLLHUP), with the reply's memory still in flight to the peer.
            peer.shutdownWrite()
            let pollReadHangUp: Int16 = 0x2000  // POLLRDHUP, which Glibc's module leaves out
            var hungUp = pollfd(fd: peer.descriptor, events: pollReadHangUp, revents: 0)
            while poll(&hungUp, 1, 30_000) == 1, hungUp.revents & Int16(POLLHUP) == 0 {
                hungUp.revents = 0
            }
            #expect(hungUp.revents & Int16(POLLHUP) != 0)
            // The relay, and with it the connection's slot, stays while the memory does (before, it finished at once).
            let finishedEarly = await eventually(attempts: 30) { server.relays.withLock { $0.isEmpty } }
            #expect(!finishedEarly, "the relay finished while the peer held the reply's shared memory")
            // The peer closes: the memory is freed, and so is the slot.
            peer.close()
            peerOpen = false
            #expect(await eventually { server.relays.withLock { $0.isEmpty } })
        }
    }

    @Test("a peer that broke the rules and then passed its own end of the connection into the server's unread queue, and exited, holds no slot: the lingering relay drops that queue first (found by a review: 278 slots and their threads held after the attackers had exited, until the server stopped)")
    func peerPassingItsOwnEndHoldsNoSlot() async throws {
        try await Self.withEchoServerSharingPayloads { server, path in
            // The server may shut its socket down between the two sends (it closes once it has said why): then again,
            // on a new connection, which ends as any other.
            var passed = false
            for _ in 0..<20 where !passed {
                passed = try await Self.passOwnEndAfterViolation(to: path)
            }
            try #require(passed, "the second send never made it before the server shut the socket")
            // Before, the relay waited for a TIOCOUTQ that nothing would ever lower.
            #expect(await eventually { server.relays.withLock { $0.isEmpty } })
        }
    }

    /// Connects, leaves a reply in shared memory unread in the peer's socket, breaks the rules, passes the peer's own
    /// end into the server's receive queue, and closes it (the peer's socket then lives on only in flight there);
    /// whether both sends made it.
    private static func passOwnEndAfterViolation(to path: String) async throws -> Bool {
        let peer = try await RawSocket.connect(to: path)
        defer { peer.close() }
        // Hello: calls, descriptors, shared payloads.
        try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x07, 0x00, 0x00])
        _ = try await peer.read(exactly: 8)
        try await peer.write(frameBytes(kind: 0x02, id: 1, payload: [UInt8](repeating: 0x61, count: 100 * 1024)))
        var readable = pollfd(fd: peer.descriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&readable, 1, 30_000) == 1, "the reply came")
        // A request that carries a descriptor outside any descriptors frame (a protocol violation: the relay stops
        // reading at once), then, in a message of its own that the relay never reads, the peer's own end.
        let stray = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(stray) }
        var descriptor = stray
        let first = frameBytes(kind: 0x02, id: 99, payload: [0x76]).withUnsafeBytes {
            csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &descriptor, 1)
        }
        #expect(first == 10, "errno \(errno)")
        descriptor = peer.descriptor
        let second = [UInt8(0x00)].withUnsafeBytes {
            csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &descriptor, 1)
        }
        return second == 1
    }

    @Test("a lingering relay drops what is left in its socket only as its peer's user's limits allow: nothing while the user is paused, the rest once it is not (found by a review: a paused user's 20,240 descriptors in flight entered the server at once and filled its descriptor table)")
    func lingeringDrainWaitsForTheUsersLimits() async throws {
        // A user of this test's own, paused from the start: as many descriptors held as a user may hold.
        let user: UInt32 = 4_000_000_000 + UInt32.random(in: 0..<1_000_000)
        PassedDescriptorCloser.adjustHeld(PassedDescriptorCloser.maximumHeldPerUser, of: user)
        var paused = true
        defer { if paused { PassedDescriptorCloser.adjustHeld(-PassedDescriptorCloser.maximumHeldPerUser, of: user) } }
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let peer = pair[1]
        var peerOpen = true
        defer { if peerOpen { close(peer) } }
        let relay = try DescriptorRelay(
            socket: pair[0],
            maximumPerMessage: 4,
            passedBy: user,
            logger: Logger(label: "test"),
            lingersWhilePeerHoldsSharedMemory: true
        )
        // A shared payload made for the peer, and bytes of it left unread in the peer's socket.
        #expect(relay.reserveSharedMemory(1 << 20, limit: 16 << 20))
        let sent = [UInt8](repeating: 0x61, count: 100).withUnsafeBytes { write(relay.channelSide, $0.baseAddress, $0.count) }
        #expect(sent == 100)
        // The peer passes the write end of a pipe, which the relay, its user paused, does not read.
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]) }
        var passed = ends[1]
        let passedBytes = [UInt8(0x00)].withUnsafeBytes {
            csocketipc_send_with_descriptors(peer, $0.baseAddress, UInt($0.count), &passed, 1)
        }
        close(ends[1])
        #expect(passedBytes == 1)
        // The peer half-closes, and the channel closes: the relay ends, and lingers for the unread payload. (The
        // embedded loop never runs the close's time limit.)
        _ = shutdown(peer, Int32(SHUT_WR))
        close(relay.channelSide)
        relay.channelClosed(eventLoop: EmbeddedEventLoop(), timeout: .seconds(30))
        // While the user is paused, the pipe's write end stays in flight: its read end sees no end of stream.
        var ready = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
        #expect(poll(&ready, 1, 300) == 0, "the drain took what a paused user passed")
        // Once it is not, the drain takes it and closes it.
        PassedDescriptorCloser.adjustHeld(-PassedDescriptorCloser.maximumHeldPerUser, of: user)
        paused = false
        ready.revents = 0
        #expect(poll(&ready, 1, 10_000) == 1, "the drain did not take the pipe once the user could read")
        var byte: UInt8 = 0
        #expect(read(ends[0], &byte, 1) == 0)
        // The peer still holds the payload unread: the relay lingers until it reads or closes. (Closed once: a second
        // close would close another test's descriptor that took the number.)
        close(peer)
        peerOpen = false
        await relay.waitUntilFinished()
    }
}
