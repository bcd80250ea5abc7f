import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A connection that passes descriptors has two sockets on each side: its own, which the relay reads and writes, and
/// the channel's end of the relay's socket pair. Socket options must reach the first.
extension DescriptorPassingTests {
    @Test("socketSendBufferSize reaches a relayed connection's own socket on both sides, not only its socket pair")
    func relayedSocketOptions() async throws {
        // An odd size no other test asks for; the kernel doubles it (socket(7)).
        let size = 333_333
        let withSize = {
            var options = Self.options()
            options.socketSendBufferSize = size
            return options
        }()
        try await withFramedTestServer(
            configure: { $0.connection = withSize },
            makeHandler: { EchoHandler() }
        ) { _, path in
            var configuration = Self.clientConfiguration()
            configuration.connection = withSize
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                _ = try await connection.request(ByteBuffer(string: "up"))
                // Client and server each have their socket and their channel's end of the relay's socket pair.
                #expect(Self.socketsWithSendBuffer(2 * size) == 4)
            }
        }
    }

    /// How many sockets of this process have a send buffer of `bytes`.
    static func socketsWithSendBuffer(_ bytes: Int) -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return entries.compactMap { Int32($0) }.filter { descriptor in
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(descriptor, SOL_SOCKET, SO_SNDBUF, &value, &length) == 0 && Int(value) == bytes
        }.count
    }
}
