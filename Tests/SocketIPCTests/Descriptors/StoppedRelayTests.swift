import Logging
@testable import SocketIPCRuntime
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
}
