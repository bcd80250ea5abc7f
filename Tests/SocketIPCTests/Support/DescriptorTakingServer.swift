import SocketIPC
import SocketIPCTesting

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs a server that takes descriptors (4 per message) and echoes requests, and a raw peer against it, as an attacker
/// is: the peer has said hello with `helloFlags` and read the server's hello when `body` gets it, with the server's
/// path. A read of the peer fails after 30 s: a safety net for a server blocked in a close, not a wait.
func withDescriptorTakingServer(helloFlags: UInt8, _ body: (RawSocket, String) async throws -> Void) async throws {
    var options = ConnectionOptions()
    options.maximumDescriptorsPerMessage = 4
    try await withFramedTestServer(configure: { $0.connection = options }, makeHandler: { EchoHandler() }) { _, path in
        let peer = try await RawSocket.connect(to: path)
        defer { peer.close() }
        var limit = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(peer.descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, helloFlags, 0x00, 0x00])
        _ = try await peer.read(exactly: 8)
        try await body(peer, path)
    }
}
