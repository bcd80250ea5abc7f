import CSocketIPCLinux
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A server that takes descriptors closes those its handler leaves: a peer may pass a TCP socket with `SO_LINGER`
/// whose send queue cannot drain, and close its own copy, so that the server's close is the last one.
@Suite("Descriptors a peer passed are closed without lingering", .timeLimit(.minutes(5)), .limitedConcurrency)
struct LingeringDescriptorTests {
    @Test("a passed TCP socket with SO_LINGER of an hour, left untaken: the next request on the connection is answered")
    func lingeringSocketDoesNotBlock() async throws {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        try await withFramedTestServer(configure: { $0.connection = options }, makeHandler: { EchoHandler() }) {
            _, path in
            var configuration = ClientConfiguration()
            configuration.connection = options
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                let stuck = try StuckTCPConnection()
                defer { stuck.close() }
                // The connection sends a duplicate; closing the original leaves the server's copy the last one.
                try await connection.send(ByteBuffer(string: "a lingering socket"), descriptors: [stuck.lingering])
                try stuck.lingering.close()
                // The handler does not take it: the server closes it before it reads this request. Closed with its
                // linger of an hour, it would block the event loop, and the request would time out.
                let reply = try await connection.request(ByteBuffer(string: "still served"), timeout: .seconds(30))
                #expect(String(buffer: reply) == "still served")
            }
        }
    }
}

/// A TCP connection on the loopback whose receiving end never reads: its sending end's queue is full, and that end has
/// `SO_LINGER` on with an hour's timeout, so that its last close would block for an hour.
private struct StuckTCPConnection {
    let lingering: SystemPackage.FileDescriptor
    let listener: Int32
    let receiver: Int32

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bind(listener, address, length) == 0 && listen(listener, 1) == 0
                    && getsockname(listener, address, &length) == 0
            }
        }
        let sender = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var small: Int32 = 4096
        setsockopt(sender, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(sender, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        let receiver = accept(listener, nil, nil)
        guard bound, connected, receiver >= 0 else {
            for descriptor in [listener, sender, receiver] where descriptor >= 0 { _ = Glibc.close(descriptor) }
            throw RawSocketError.failed("a loopback TCP connection", errno)
        }
        setsockopt(receiver, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(sender, F_SETFL, fcntl(sender, F_GETFL) | O_NONBLOCK)
        let chunk = [UInt8](repeating: 0x78, count: 65536)
        while chunk.withUnsafeBytes({ send(sender, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 {}
        var linger = Glibc.linger(l_onoff: 1, l_linger: 3600)
        setsockopt(sender, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        self.lingering = SystemPackage.FileDescriptor(rawValue: sender)
        self.listener = listener
        self.receiver = receiver
    }

    /// Closes the never-reading end and the listener (the lingering end is the test's to close).
    func close() {
        _ = Glibc.close(self.receiver)
        _ = Glibc.close(self.listener)
    }
}
