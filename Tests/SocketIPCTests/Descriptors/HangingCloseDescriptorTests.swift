// Linux only: FUSE, mount(2) and umount2(2).
#if os(Linux)
import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A peer may pass a descriptor whose close never returns: a file on a FUSE file system it serves, which never answers
/// the flush of a close. The server closes what a peer passed and no frame took, and the shared memory it refuses; it
/// does so on threads of its own (``PassedDescriptorCloser``). Before, such a close on an event loop froze the loop,
/// every connection on it and the server's shutdown; in the relay's thread, it kept the connection and its user's
/// slot for good (found by a review, with a FUSE mount served from Python).
@Suite(
    "Descriptors whose close never returns",
    .timeLimit(.minutes(3)),
    .limitedConcurrency,
    .enabled(if: HangingFUSEMount.isAvailable, "mounts a FUSE file system and connects as other users: root and /dev/fuse")
)
struct HangingCloseDescriptorTests {
    @Test(
        "a file whose flush is never answered, passed with a message that leaves it, with a frame that does not take it, or as shared memory: the connection goes on or is refused, other clients are served, and the server shuts down",
        arguments: ["left by the handler", "no descriptors frame", "shared memory"]
    )
    func hangingCloseDoesNotBlock(how: String) async throws {
        let mount = try HangingFUSEMount()
        let file: Int32
        do { file = try mount.open() } catch {
            mount.stop()
            throw error
        }
        // Stopping the file system (its flushes answered from then on) ends the closes still waiting, and this test's
        // own close of the file after it: also when the test fails, or the process could not exit.
        defer {
            mount.stop()
            close(file)
        }
        // Hello: calls, descriptors, shared payloads.
        // A user of its own per case: the library charges these closes, which hold two closing threads of the user's
        // until the file system stops, to the peer's user, and this process's own user is every other test's.
        let peerUser = uid_t(61_000 + ["left by the handler", "no descriptors frame", "shared memory"].firstIndex(of: how)!)
        try await withDescriptorTakingServer(helloFlags: 0x07, peerUser: peerUser) { peer, path in
            let announce: [UInt8] = [0, 0, 0, 2, 0x0D, 1]
            let message = frameBytes(kind: 0x01, payload: Array("a file on FUSE".utf8))
            // A shared payload of 4 bytes as a one-way message (kind 0x01, id 0).
            let shared: [UInt8] = [0, 0, 0, 0x0E, 0x0E, 0x01, 0, 0, 0, 0] + withUnsafeBytes(of: UInt64(4).bigEndian, Array.init)
            let (first, rest): ([UInt8], [UInt8]) =
                switch how {
                case "left by the handler": (announce, message)
                case "no descriptors frame": (message, [])
                default: (announce, shared)
                }
            var descriptor = file
            let sent = first.withUnsafeBytes {
                csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &descriptor, 1)
            }
            #expect(sent == first.count)
            try await peer.write(rest)
            if how == "left by the handler" {
                // The server closes the file before it reads this request.
                try await peer.write(frameBytes(kind: 0x02, id: 7, payload: Array("still served".utf8)))
                let reply = try await peer.read(exactly: 9 + 12)
                #expect(reply == frameBytes(kind: 0x03, id: 7, payload: Array("still served".utf8)))
            } else {
                // Refused: going-away 0x01 (a protocol violation), then the close.
                let received = try await peer.readUntilClosed()
                let last = RawFrame.parse(received).last
                #expect(last?.kind == 0x05 && last?.body.first == 0x01, "\(RawFrame.parse(received))")
            }
            // Another client, on whichever loop it lands, is served.
            for _ in 0..<4 {
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "next")) }
                #expect(String(buffer: reply) == "next")
            }
        }
        // The server shut down with the close still waiting; stopping the file system (deferred above) ends it.
    }

    @Test("a client that sends such a file (a server forwarding what a peer passed) closes its duplicate off its relay: the connection ends and the server shuts down")
    func sentDuplicateDoesNotBlock() async throws {
        let mount = try HangingFUSEMount()
        let file: Int32
        do { file = try mount.open() } catch {
            mount.stop()
            throw error
        }
        // The server keeps what it gets until the file system stops: its own close of it would wait meanwhile,
        // charged to this process's user, whose account every other test shares.
        let keeper = DescriptorKeeper()
        defer {
            mount.stop()
            keeper.closeAll()
            close(file)
        }
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        var client = ClientConfiguration()
        client.connection = options
        // Before, the relay thread that sent the duplicate closed it and waited for good for its flush, so the
        // connection never ended: withConnection did not return, nor the server's shutdown.
        try await withFramedTestServer(configure: { $0.connection = options }, makeHandler: { keeper }) { _, path in
            let reply = try await Client.withConnection(to: path, configuration: client) { connection in
                try await connection.send(ByteBuffer(string: "a file on FUSE"), descriptors: [FileDescriptor(rawValue: file)])
                return try await connection.request(ByteBuffer(string: "still served"))
            }
            #expect(String(buffer: reply) == "still served")
        }
    }

    @Test("such a file that the server sends back to the peer that passed it holds only that peer's user's closes: another user's 1,200 replies carrying a descriptor all come (beyond the 1,024 at which senders wait) (found by a review: every connection's senders stopped at their bound)")
    func forwardedFileHoldsOnlyItsPeer() async throws {
        let mount = try HangingFUSEMount()
        let file: Int32
        do { file = try mount.open() } catch {
            mount.stop()
            throw error
        }
        defer {
            mount.stop()
            close(file)
        }
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        var client = ClientConfiguration()
        client.connection = options
        try await withFramedTestServer(
            configure: { $0.connection = options; $0.authorization = .anyone },
            makeHandler: { DescriptorReturner() }
        ) { _, path in
            // The peer (a user of its own) passes the file twice and has it sent back: the server's two copies, once
            // sent, wait for good to be closed.
            let peer = try await RawSocket.connect(to: path, asUser: 61_010)
            defer { peer.close() }
            try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            _ = try await peer.read(exactly: 8)
            for id: UInt32 in [1, 2] {
                let frames: [UInt8] = [0, 0, 0, 2, 0x0D, 1] + frameBytes(kind: 0x02, id: id, payload: Array("fuse".utf8))
                var descriptor = file
                let sent = frames.withUnsafeBytes {
                    csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &descriptor, 1)
                }
                #expect(sent == frames.count)
            }
            // Both replies read (their descriptors dropped by the kernel, which flushes nothing): both copies sent.
            _ = try await peer.read(exactly: 2 * (2 + 4 + 4 + 5 + 4))
            // Another user's connection: each reply carries a copy of /dev/null, sent and closed as the server goes.
            let null = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
            defer { try? null.close() }
            let answered = try await Client.withConnection(to: path, configuration: client) { connection in
                var answered = 0
                for _ in 0..<1_200 {
                    let (_, descriptors) = try await connection.request(ByteBuffer(string: "x"), descriptors: [null])
                    for copy in descriptors.take() { try copy.close() }
                    answered += 1
                }
                return answered
            }
            #expect(answered == 1_200)
        }
    }
}

/// Answers each request with the descriptors it brought (forwarding them, as a broker does), and closes its own as
/// what their peer passed.
private struct DescriptorReturner: ConnectionHandler {
    func didReceiveRequest(_ request: ByteBuffer, descriptors: ReceivedDescriptors, reply: Reply, on connection: Connection) {
        let files = descriptors.take()
        reply.succeed(request, descriptors: files)
        closePassedDescriptors(files.map(\.rawValue), passedBy: descriptors.passedBy)
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}

/// A handler that keeps the descriptors it gets, to close them when told, and echoes requests.
private final class DescriptorKeeper: ConnectionHandler, Sendable {
    private let kept = Mutex<[FileDescriptor]>([])

    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        let taken = descriptors.take()
        self.kept.withLock { $0 += taken }
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }

    func closeAll() {
        for descriptor in self.kept.withLock({ kept in
            defer { kept = [] }
            return kept
        }) {
            try? descriptor.close()
        }
    }
}
#endif
