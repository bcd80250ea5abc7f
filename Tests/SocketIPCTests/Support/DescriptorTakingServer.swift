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
/// - Parameter peerUser: The user id the server sees for the peer (``RawSocket/connect(to:asUser:)``, as root), and
///   lets in; `nil` for this process's own. The library charges the closes of what a peer passed to its user: a peer
///   whose closes never return must not be this process's user, whose account every other test shares.
func withDescriptorTakingServer(
    helloFlags: UInt8,
    peerUser: uid_t? = nil,
    _ body: (RawSocket, String) async throws -> Void
) async throws {
    var options = ConnectionOptions()
    options.maximumDescriptorsPerMessage = 4
    let configure: (inout ServerConfiguration) -> Void = { configuration in
        configuration.connection = options
        if let peerUser { configuration.authorization = .sameUser || .users([peerUser]) }
    }
    try await withFramedTestServer(configure: configure, makeHandler: { EchoHandler() }) { _, path in
        let peer = try await RawSocket.connect(to: path, asUser: peerUser)
        defer { peer.close() }
        var limit = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(peer.descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        try await peer.write([0x53, 0x49, 0x50, 0x43, 0x01, helloFlags, 0x00, 0x00])
        _ = try await peer.read(exactly: 8)
        try await body(peer, path)
    }
}
