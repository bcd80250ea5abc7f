import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Messages of a call that arrived before its connection closed are still read, then the call's end (if the peer
/// had sent it) or the close's error, as gRPC delivers the messages it received before a stream's status. Found by a
/// hostile review: they were dropped at the close, and a stream whose end had arrived reported a normal end without
/// them; a resubscribing watch lost the changes it had received before a graceful restart.
@Suite("Services: messages received before a close", .timeLimit(.minutes(2)))
struct ReceivedBeforeCloseTests {
    /// A method whose handler writes five changes at once, then waits.
    enum Changes: ServiceMethod {
        static let name = "test.changes"
        typealias Request = String
        typealias Response = String
    }

    @Test("a server stream its handler completed, read after the server's graceful shutdown closed the connection: every element, then a normal end")
    func completedStreamReadAfterTheClose() async throws {
        try await withServiceTestServer(router: keyValueRouter()) { server, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let received = try await connection.serverStreaming(Count.self, 10) { numbers in
                var received: [Int] = []
                var iterator = numbers.makeAsyncIterator()
                if let first = try await iterator.next() { received.append(first) }
                server.shutdownGracefully()
                await connection.waitUntilClosed()
                while let number = try await iterator.next() { received.append(number) }
                return received
            }
            #expect(received == Array(0..<10))
        }
    }

    @Test("a peer that sends five messages and the call's end, then closes: all five, then a normal end; without the end: all five, then connectionClosed")
    func messagesThenClose() async throws {
        for sendsEnd in [true, false] {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/raw.sock"
                let listener = try makeStaleSocket(at: path, listening: true)
                defer { close(listener) }
                let serving = Task {
                    let peer = try await RawSocket.accepting(on: listener)
                    defer { peer.close() }
                    _ = try await peer.read(exactly: helloBytes.count)
                    try await peer.write(callsPeerHelloBytes)
                    let id = try await peer.readCallOpen() ?? 0
                    var bytes: [UInt8] = []
                    for number in 0..<5 { bytes += messageBytes(id: id, json: "\(number)") }
                    if sendsEnd { bytes += callEndOKBytes(id: id) }
                    try await peer.write(bytes)
                }
                let connection = try await Client.connect(to: path)
                defer { connection.close() }
                var received: [Int] = []
                var failure: SocketIPCError?
                do {
                    try await connection.serverStreaming(Count.self, 5) { numbers in
                        var iterator = numbers.makeAsyncIterator()
                        try await serving.value
                        await connection.waitUntilClosed()
                        while let number = try await iterator.next() { received.append(number) }
                    }
                } catch let error as SocketIPCError {
                    failure = error
                }
                #expect(received == Array(0..<5), "sends its end: \(sendsEnd)")
                #expect(failure?.code == (sendsEnd ? nil : .connectionClosed), "\(String(describing: failure))")
            }
        }
    }

    @Test("a resubscribing watch yields the changes it received before a graceful restart, then the new server's")
    func resubscribingWatchAcrossARestart() async throws {
        @Sendable func router(_ generation: String) -> ServiceRouter {
            var router = ServiceRouter()
            router.registerServerStreaming(Changes.self) { key, writer, _ in
                for number in 0..<5 { try await writer.write("\(key)@\(generation)#\(number)") }
                try await Task.sleep(for: .seconds(3600))
            }
            return router
        }
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/watch.sock"
            var configuration = ServiceClientConfiguration()
            configuration.backoff = ConnectionBackoff(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(100))
            let client = ServiceClient(path: path, configuration: configuration)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                defer { client.shutdown() }
                var changes = client.resubscribing(Changes.self, "c").makeAsyncIterator()
                var seen: [String] = []
                try await withFramedServer(
                    path: path,
                    configure: { _ in },
                    makeHandler: { ServiceConnectionHandler(router: router("first")) }
                ) { server in
                    if let change = try await changes.next() { seen.append(change) }
                    // The other four are sent on credit, at once; the shutdown comes after them on the same connection.
                    server.shutdownGracefully()
                }
                try await withFramedServer(
                    path: path,
                    configure: { _ in },
                    makeHandler: { ServiceConnectionHandler(router: router("second")) }
                ) { _ in
                    while seen.count < 6, let change = try await changes.next() { seen.append(change) }
                }
                #expect(seen == (0..<5).map { "c@first#\($0)" } + ["c@second#0"])
                client.shutdown()
                try await group.waitForAll()
            }
        }
    }
}
