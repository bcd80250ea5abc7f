import NIOCore
import NIOPosix
import SocketIPC
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Probing a socket file", .timeLimit(.minutes(1)))
struct ProbeTests {
    @Test("a framed server is recognised by its hello, with its protocol version and credentials")
    func framedServer() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/framed.sock"
            try await withFramedServer(path: path, makeHandler: { EchoHandler() }) { _ in
                let result = try await Client.probe(path)
                #expect(result.style == .framed(protocolVersion: 1))
                #if os(Linux)
                #expect(result.peer?.processID == getpid())
                #endif
            }
        }
    }

    @Test("an EOF-style server reads an empty message and answers at once; the probe sends it nothing else")
    func eofServer() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/eof.sock"
            let received = Mutex<[Int]>([])
            try await withRunningServer({
                Server.eof(
                    configuration: .init(path: path),
                    logger: testLogger,
                    onServerRunning: $0,
                    handler: .onEventLoop { message, _ in
                        received.withLock { $0.append(message.readableBytes) }
                        return ByteBuffer(string: "ok")
                    }
                )
            }) { _ in
                // A long timeout: the answer must come from the server closing, not from the clock.
                let result = try await Client.probe(path, timeout: .seconds(30))
                #expect(result.style == .endOfFile(acknowledgementLength: 2))
            }
            #expect(received.withLock { $0 } == [0], "the handler saw one empty message, not a hello")
        }
    }

    @Test("a listener that says nothing is silent; one that sends other bytes speaks another protocol")
    func otherListeners() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/other.sock"
            let listener = try RawListener(path: path)
            defer { listener.close() }
            // Nobody accepts: the connection waits in the backlog and nothing comes back.
            let silent = try await Client.probe(path, timeout: .milliseconds(100))
            #expect(silent.style == .silent)
            // That probe's connection, closed by now, is still first in the backlog: take it out of the way.
            try await listener.acceptAndWrite([]).closeConnection()

            let talker = Task { try await listener.acceptAndWrite(Array("HTTP/1.1 400 Bad Request\r\n".utf8)) }
            let other = try await Client.probe(path, timeout: .milliseconds(300))
            #expect(other.style == .otherProtocol)
            try await talker.value.closeConnection()
        }
    }

    @Test("nothing listening is a clear error naming the path")
    func nothingListens() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/nobody.sock"
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.probe(path) }
            #expect(error?.code == .connectionRefused)
            #expect(error?.path == path)
        }
    }
}

/// A bare listening Unix domain socket that accepts only when told to, for peers that are not SocketIPC servers.
private final class RawListener: Sendable {
    let descriptor: Int32

    init(path: String) throws {
        self.descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard withSocketAddress(path, { bind(self.descriptor, $0, $1) }) == 0, listen(self.descriptor, 8) == 0 else {
            Glibc.close(self.descriptor)
            throw RawSocketError.failed("bind", errno)
        }
    }

    /// Accepts the oldest waiting connection and writes `bytes` to it, keeping it open.
    func acceptAndWrite(_ bytes: [UInt8]) async throws -> AcceptedConnection {
        try await NIOThreadPool.singleton.runIfActive {
            let connection = accept(self.descriptor, nil, nil)
            guard connection >= 0 else { throw RawSocketError.failed("accept", errno) }
            _ = bytes.withUnsafeBytes { Glibc.write(connection, $0.baseAddress, $0.count) }
            return AcceptedConnection(descriptor: connection)
        }
    }

    func close() {
        Glibc.close(self.descriptor)
    }
}

private struct AcceptedConnection: Sendable {
    let descriptor: Int32

    func closeConnection() {
        Glibc.close(self.descriptor)
    }
}
