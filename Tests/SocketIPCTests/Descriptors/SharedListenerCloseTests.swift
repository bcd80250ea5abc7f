#if os(Linux)
import CSocketIPCLinux
import Logging
import NIOCore
import NIOPosix
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An acceptor of a shared (socket-activated) listening socket may hold its last descriptor: closing it then drops
/// the connections still in its backlog, and whatever their peers passed before the server turned passing off. The
/// last close of a lingering socket among those must not hold the accepting thread, which `Server.run()` waits for
/// (found by a review: SIGTERM took 50 s, with a grace period of 10 s, when peers had queued such sockets).
@Suite("A shared listening socket's close", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SharedListenerCloseTests {
    @Test("an acceptor that stops closes its shared socket without waiting for a lingering socket passed by a connection in its backlog")
    func backlogWithLingeringSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            // A listening socket as a service manager makes one: it takes descriptors, as any new socket does.
            let listening = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(listening >= 0)
            try #require(withSocketAddress(path) { bind(listening, $0, $1) } == 0, "bind: errno \(errno)")
            try #require(Glibc.listen(listening, 16) == 0, "listen: errno \(errno)")
            // A peer connects and passes a TCP socket that lingers for an hour, then closes its own copies: the
            // one left is in its connection, which the acceptor never takes from the backlog.
            let stuck = try StuckTCPConnection()
            defer { stuck.close() }
            let peer = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(peer >= 0)
            defer { close(peer) }
            try #require(connectUnixSocket(peer, to: path) == 0, "connect: errno \(errno)")
            var passed = stuck.lingering.rawValue
            let sent = [UInt8(0x00)].withUnsafeBytes {
                csocketipc_send_with_descriptors(peer, $0.baseAddress, UInt($0.count), &passed, 1)
            }
            try #require(sent == 1, "sendmsg: errno \(errno)")
            try stuck.lingering.close()
            // The server has no room for another connection until it stops: the connection stays in the backlog.
            let acceptor = Acceptor(
                descriptor: listening,
                sharesListeningSocket: true,
                eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
                logger: Logger(label: "test"),
                onAccept: { close($0) },
                waitForRoom: { stopping in
                    var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                    while !stopping() { nanosleep(&pause, nil) }
                },
                onError: { _ in }
            )
            acceptor.start()
            acceptor.stop()
            // Before, the accepting thread's close of the socket dropped the lingering socket and waited for its hour
            // (the suite's time limit ended the test).
            try await acceptor.finishedFuture.get()
        }
    }
}
#endif
