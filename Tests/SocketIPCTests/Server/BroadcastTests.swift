import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

@Suite("Server.broadcast", .timeLimit(.minutes(5)), .limitedConcurrency)
struct BroadcastTests {
    @Test("reaches every connection, and the filter chooses which")
    func reachesEveryConnection() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            var clients: [RecordingClient] = []
            for _ in 0..<3 { clients.append(try await RecordingClient.connect(to: path)) }
            defer { for client in clients { client.connection.close() } }
            let onServer = server.connections
            try #require(onServer.count == 3)

            #expect(await server.broadcast(ByteBuffer(string: "to all")) == 3)
            let chosen = onServer[1].id
            #expect(await server.broadcast(ByteBuffer(string: "to one"), where: { $0.id == chosen }) == 1)
            #expect(await server.broadcast(ByteBuffer(string: "to none"), where: { _ in false }) == 0)
            #expect(await server.broadcast(ByteBuffer(string: "end")) == 3)

            // Each connection gets its messages in order, so what the filter left out never arrives before "end".
            for index in clients.indices {
                var received: [String] = []
                while let message = await clients[index].next() {
                    received.append(message)
                    if message == "end" { break }
                }
                #expect(received == (index == 1 ? ["to all", "to one", "end"] : ["to all", "end"]))
            }
        }
    }

    @Test("does not count a connection that closed, and sends a message over the size limit to none")
    func skipsClosedConnections() async throws {
        try await withFramedTestServer(
            configure: { $0.connection.maximumMessageSize = 1024; $0.handshakeTimeout = .seconds(120) },
            makeHandler: { EchoHandler() }
        ) { server, path in
            var open = try await RecordingClient.connect(to: path)
            let closing = try await RecordingClient.connect(to: path)
            defer { open.connection.close() }
            let onServer = server.connections
            try #require(onServer.count == 2)
            // Listed in this snapshot, closed before the broadcast.
            closing.connection.close()
            await onServer[1].waitUntilClosed()
            let listedBefore = Set(onServer.map(\.id))
            #expect(await server.broadcast(ByteBuffer(string: "hello"), where: { listedBefore.contains($0.id) }) == 1)
            #expect(await open.next() == "hello")
            #expect(await server.broadcast(ByteBuffer(repeating: 1, count: 2048)) == 0)
        }
    }

    @Test("a peer that stops reading holds up neither the broadcast nor the others, and is skipped once behind")
    func stuckPeerDoesNotHoldUpTheOthers() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { server, path in
            // A peer that says hello, has a request answered, and then reads nothing more.
            let stuck = try await connectEstablishedRawSocket(to: path)
            let stuckOnServer = try #require(server.connections.first)
            var clients: [RecordingClient] = []
            for _ in 0..<2 { clients.append(try await RecordingClient.connect(to: path)) }
            defer { for client in clients { client.connection.close() } }
            #expect(server.connections.count == 3)

            // Broadcast 64 KiB at a time, each read by the two clients before the next, until the stuck peer's
            // socket buffers and queue are full and it is skipped; the others get every message all along.
            let chunk = String(repeating: "x", count: 64 * 1024)
            var broadcasts = 0
            var skippedStuckPeer = false
            while broadcasts < 500 && !skippedStuckPeer {
                let sent = await server.broadcast(ByteBuffer(string: chunk))
                broadcasts += 1
                #expect(sent >= 2)
                skippedStuckPeer = sent == 2
                for index in clients.indices {
                    #expect(await clients[index].next()?.count == chunk.utf8.count)
                }
            }
            #expect(skippedStuckPeer, "after \(broadcasts) broadcasts of 64 KiB the stuck peer still took them")
            #expect(stuckOnServer.isOpen, "skipped, not closed")

            // It stays behind; the others are still served at once.
            for _ in 0..<3 {
                #expect(await server.broadcast(ByteBuffer(string: "more")) >= 2)
                for index in clients.indices { #expect(await clients[index].next() == "more") }
            }
            stuck.close()
            await stuckOnServer.waitUntilClosed()
            #expect(await server.broadcast(ByteBuffer(string: "last")) == 2)
        }
    }
}
