import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Server.connections", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectionsTests {
    @Test("lists framed connections once their handshake is done, in the order accepted, and forgets those that close")
    func growsAndShrinks() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            #expect(server.connections.isEmpty)
            // Connected but silent: no hello yet, so not listed.
            let silent = try await RawSocket.connect(to: path)
            defer { silent.close() }

            let first = try await RecordingClient.connect(to: path)
            let firstOnServer = try #require(server.connections.first)
            #expect(server.connections.count == 1)
            #expect(firstOnServer.peer?.processID == getpid())

            let second = try await RecordingClient.connect(to: path)
            let listed = server.connections
            try #require(listed.count == 2)
            #expect(listed[0].id == firstOnServer.id)
            let secondOnServer = listed[1]
            #expect(secondOnServer.id > firstOnServer.id, "in the order accepted")

            // The server forgets a connection when its channel closes, before anyone waiting for the close resumes.
            first.connection.close()
            await firstOnServer.waitUntilClosed()
            #expect(server.connections.map(\.id) == [secondOnServer.id])

            second.connection.close()
            await secondOnServer.waitUntilClosed()
            #expect(server.connections.isEmpty)
        }
    }

    @Test("holds no more than maximumConnections")
    func boundedByTheConnectionLimit() async throws {
        try await withFramedTestServer(configure: { $0.maximumConnections = 2; $0.handshakeTimeout = .seconds(120) }, makeHandler: { EchoHandler() }) {
            server, path in
            let first = try await RecordingClient.connect(to: path)
            let second = try await RecordingClient.connect(to: path)
            defer { first.connection.close(); second.connection.close() }
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
            #expect(server.connections.count == 2)
        }
    }

    @Test("is empty for an EOF-style server")
    func emptyForEOFStyle() async throws {
        let handler = EOFMessageHandler.onEventLoop { message, _ in message }
        try await withEOFTestServer(handler: handler) { server, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write(Array("half a message".utf8))
            #expect(server.connections.isEmpty)
            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "whole"), to: path)
            #expect(String(buffer: acknowledgement) == "whole")
            #expect(server.connections.isEmpty)
        }
    }
}
