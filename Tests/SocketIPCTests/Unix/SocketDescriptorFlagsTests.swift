import Logging
import NIOCore
import NIOPosix
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
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

/// The sockets SocketIPC makes for a connection, on either side, are close-on-exec and non-blocking from the start:
/// a child spawned by another thread meanwhile must not inherit one, and the event loops and the accepting thread
/// must never block on a peer. On Linux `accept4(2)` and `socket(2)` set both flags (no `fcntl(2)` after them).
@Suite("Connection sockets' descriptor flags")
struct SocketDescriptorFlagsTests {
    @Test("a socket accepted by the server is close-on-exec and non-blocking")
    func acceptedSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let listening = try Self.listen(at: path)
            let (flags, continuation) = AsyncStream.makeStream(of: DescriptorFlags.self)
            let acceptor = Acceptor(
                descriptor: listening,
                eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
                logger: Logger(label: "test"),
                onAccept: { accepted in
                    continuation.yield(DescriptorFlags(of: accepted))
                    close(accepted)
                },
                onError: { _ in continuation.finish() }
            )
            acceptor.start()
            let client = makeUnixStreamSocket()
            #expect(client >= 0)
            #expect(connectUnixSocket(client, to: path) == 0)
            var iterator = flags.makeAsyncIterator()
            let accepted = await iterator.next()
            acceptor.stop()
            try await acceptor.finishedFuture.get()
            close(client)
            #expect(accepted == DescriptorFlags(closeOnExec: true, nonBlocking: true))
        }
    }

    @Test("a socket the client connects is close-on-exec and non-blocking, and refuses descriptors")
    func connectedSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let listening = try Self.listen(at: path)
            defer { close(listening) }
            let connected = try await SocketConnector.connect(to: try SocketPath(path), timeout: .seconds(10))
            let flags = DescriptorFlags(of: connected)
            // And it refuses descriptors until a client that takes them has its relay read the socket: a server it
            // refuses, or any failure before, leaves no descriptor queued that the close would drop (Linux 6.16 and
            // later; 83 is SO_PASSRIGHTS).
            var passRights: Int32 = -1
            var length = socklen_t(MemoryLayout<Int32>.size)
            let kernelHasPassRights = getsockopt(connected, SOL_SOCKET, 83, &passRights, &length) == 0
            close(connected)
            #expect(flags == DescriptorFlags(closeOnExec: true, nonBlocking: true))
            if kernelHasPassRights { #expect(passRights == 0) }
        }
    }

    /// A bound, listening socket at `path`.
    private static func listen(at path: String) throws -> Int32 {
        let descriptor = makeUnixStreamSocket()
        try #require(descriptor >= 0)
        let bound = withSocketAddress(path) { bind(descriptor, $0, $1) }
        try #require(bound == 0, "bind: errno \(errno)")
        try #require(systemListen(descriptor, 16) == 0, "listen: errno \(errno)")
        return descriptor
    }
}

/// `FD_CLOEXEC` and `O_NONBLOCK` of a descriptor, as `fcntl(2)` reads them.
private struct DescriptorFlags: Equatable, Sendable {
    var closeOnExec: Bool
    var nonBlocking: Bool

    init(closeOnExec: Bool, nonBlocking: Bool) {
        self.closeOnExec = closeOnExec
        self.nonBlocking = nonBlocking
    }

    init(of descriptor: Int32) {
        self.closeOnExec = fcntl(descriptor, F_GETFD) & FD_CLOEXEC != 0
        self.nonBlocking = fcntl(descriptor, F_GETFL) & O_NONBLOCK != 0
    }
}

#if canImport(Glibc)
private let systemListen = Glibc.listen
#elseif canImport(Musl)
private let systemListen = Musl.listen
#elseif canImport(Darwin)
private let systemListen = Darwin.listen
#endif
