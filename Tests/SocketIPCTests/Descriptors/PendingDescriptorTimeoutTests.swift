import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Descriptors a peer passed and never lets a frame take do not keep its connection forever (D-Bus's CVE-2014-3637,
/// `pending_fd_timeout`; found by a review: a peer that passed its own end of the connection with a descriptors frame
/// and exited left a connection whose end-of-file never came, since the server held the last reference to the peer's
/// end; 138 of them filled its user's connection slots, with their 2 relay threads each, until the server stopped).
@Suite("Descriptors that wait for a frame", .timeLimit(.minutes(2)), .limitedConcurrency)
struct PendingDescriptorTimeoutTests {
    static func options() -> ConnectionOptions {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        options.pendingDescriptorTimeout = .milliseconds(200)
        return options
    }

    /// Connects a raw peer that passes descriptors (hello flags: calls, descriptors) and passes its own end of the
    /// connection with a descriptors frame announcing one, never followed by the frame that would take it.
    static func passOwnEnd(to path: String) async throws -> RawSocket {
        let peer = try await RawSocket.connect(to: path)
        try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
        _ = try await peer.read(exactly: 8)
        let frame: [UInt8] = [0, 0, 0, 2, 0x0D, 1]
        var own = peer.descriptor
        let sent = frame.withUnsafeBytes {
            csocketipc_send_with_descriptors(peer.descriptor, $0.baseAddress, UInt($0.count), &own, 1)
        }
        #expect(sent == frame.count)
        return peer
    }

    @Test("a peer that reads gets going-away 0x01 naming the limit, then the close")
    func peerIsToldWhy() async throws {
        try await withFramedTestServer(configure: { $0.connection = Self.options() }, makeHandler: { EchoHandler() }) {
            _, path in
            let peer = try await Self.passOwnEnd(to: path)
            defer { peer.close() }
            let received = try await peer.readUntilClosed()
            let last = RawFrame.parse(received).last
            #expect(last?.kind == 0x05 && last?.body.first == 0x01, "\(RawFrame.parse(received))")
            let text = String(decoding: last?.body.dropFirst() ?? [], as: UTF8.self)
            #expect(text.contains("pendingDescriptorTimeout"), "\(text)")
        }
    }

    @Test("a peer that passed its own end and closed its copy: the connection still ends, and the server forgets it")
    func ownEndDoesNotKeepTheConnection() async throws {
        try await withFramedTestServer(configure: { $0.connection = Self.options() }, makeHandler: { EchoHandler() }) {
            server, path in
            let peer = try await Self.passOwnEnd(to: path)
            #expect(await eventually { server.connections.count == 1 })
            // The peer is gone; only the server holds its end now, so no end-of-file can tell the server.
            peer.close()
            // Before, the connection stayed until the server stopped.
            #expect(await eventually { server.connections.isEmpty }, "\(server.connections.count) connection(s) left")
        }
    }
}
