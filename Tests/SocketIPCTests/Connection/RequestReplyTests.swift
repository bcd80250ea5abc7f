import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Requests and replies", .timeLimit(.minutes(5)), .limitedConcurrency)
struct RequestReplyTests {
    @Test("100 concurrent requests on one connection complete out of order: a slow one does not hold up the rest")
    func outOfOrder() async throws {
        let (heldReplies, heldReplyContinuation) = AsyncStream.makeStream(of: Reply.self)
        try await withFramedTestServer(makeHandler: { HoldingEchoHandler(held: heldReplyContinuation) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            // The first request reaches the server and is held there while 99 more are sent and answered.
            let slow = Task { try await connection.request(ByteBuffer(string: "hold")) }
            var replies = heldReplies.makeAsyncIterator()
            let held = try #require(await replies.next())
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<99 {
                    group.addTask {
                        let reply = try await connection.request(ByteBuffer(string: "fast \(index)"))
                        #expect(String(buffer: reply) == "fast \(index)")
                    }
                }
                try await group.waitForAll()
            }
            held.succeed(ByteBuffer(string: "answered last"))
            #expect(String(buffer: try await slow.value) == "answered last")
        }
    }

    @Test("a handler that throws sends an error reply the caller gets as remoteError; the connection stays up")
    func remoteError() async throws {
        try await withFramedTestServer(makeHandler: {
            AsyncRequestHandler { request, _ in
                if String(buffer: request) == "throw" { throw SocketIPCError(.remoteError, "the handler threw on purpose") }
                return request
            }
        }) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: SocketIPCError.self) { _ = try await connection.request(ByteBuffer(string: "throw")) }
                #expect(error?.code == .remoteError)
                #expect(error?.message == "the handler threw on purpose")
                #expect(connection.isOpen)
                let after = try await connection.request(ByteBuffer(string: "after"))
                #expect(String(buffer: after) == "after")
            }
        }
    }

    @Test("a request that outlives its timeout fails with timedOut; the late reply is dropped and the connection works")
    func timeout() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            try await Client.withConnection(to: path) { connection in
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await connection.request(ByteBuffer(string: "slow:300"), timeout: .milliseconds(20))
                }
                #expect(error?.code == .timedOut)
                let late = try await connection.request(ByteBuffer(string: "slow:400"))
                #expect(String(buffer: late) == "slow:400")
            }
        }
    }

    @Test("cancelling the waiting task ends the wait with CancellationError")
    func cancellation() async throws {
        try await withFramedTestServer(makeHandler: { HangingHandler() }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let waiting = Task { try await connection.request(ByteBuffer(string: "never answered")) }
            waiting.cancel()
            await #expect(throws: CancellationError.self) { _ = try await waiting.value }
            #expect(connection.isOpen)
        }
    }

    @Test("when the connection drops, every pending request fails at once with connectionClosed")
    func dropFailsPending() async throws {
        try await withFramedTestServer(makeHandler: { HangingHandler() }) { _, path in
            let connection = try await Client.connect(to: path)
            let failures = Recorder()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<10 {
                    group.addTask {
                        do {
                            _ = try await connection.request(ByteBuffer(string: "hang"))
                        } catch let error as SocketIPCError {
                            failures.items.withLock { $0.append("\(error.code)") }
                        }
                    }
                }
                // Closing from the server side: the handler closes the connection on this message.
                try await connection.send(ByteBuffer(string: "close"))
                try await group.waitForAll()
            }
            #expect(failures.items.withLock { $0 } == Array(repeating: "connectionClosed", count: 10))
            await #expect(throws: SocketIPCError.self) { try await connection.send(ByteBuffer(string: "late")) }
        }
    }

    @Test("abort closes the connection at once: pending requests and later calls fail with connectionClosed")
    func abortFailsPending() async throws {
        try await withFramedTestServer(makeHandler: { HangingHandler() }) { _, path in
            let connection = try await Client.connect(to: path)
            // Whether the request is on the wire or not yet sent when the connection closes, it fails the same way.
            let pending = Task { try await connection.request(ByteBuffer(string: "never answered")) }
            connection.abort()
            let error = await #expect(throws: SocketIPCError.self) { _ = try await pending.value }
            #expect(error?.code == .connectionClosed)
            await connection.waitUntilClosed()
            #expect(!connection.isOpen)
            let late = await #expect(throws: SocketIPCError.self) { try await connection.send(ByteBuffer(string: "late")) }
            #expect(late?.code == .connectionClosed)
            connection.abort()  // again: nothing happens
        }
    }

    @Test("500 concurrent clients, each making requests")
    func manyClients() async throws {
        raiseFileDescriptorLimit()
        var clientConfiguration = ClientConfiguration()
        clientConfiguration.connectTimeout = .seconds(120)
        let patient = clientConfiguration
        try await withFramedTestServer(configure: { $0.handshakeTimeout = .seconds(120) }, makeHandler: { EchoHandler() }) { _, path in
            let replies = try await withThrowingTaskGroup(of: Int.self) { group in
                for client in 0..<500 {
                    group.addTask {
                        try await Client.withConnection(to: path, configuration: patient) { connection in
                            var matched = 0
                            for request in 0..<5 {
                                let text = "client \(client) request \(request)"
                                if String(buffer: try await connection.request(ByteBuffer(string: text))) == text { matched += 1 }
                            }
                            return matched
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(replies == 2500)
        }
    }

    @Test("typed messages: Codable requests and replies")
    func codable() async throws {
        struct Sum: Codable { var numbers: [Int] }
        struct Total: Codable, Equatable { var total: Int }
        try await withFramedTestServer(makeHandler: { TypedHandler() }) { _, path in
            try await Client.withConnection(to: path) { connection in
                let total = try await connection.request(Sum(numbers: [1, 2, 3, 4]), as: Total.self)
                #expect(total == Total(total: 10))
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await connection.request(["not": "a sum"], as: Total.self)
                }
                #expect(error?.code == .remoteError)
            }
        }

        struct TypedHandler: ConnectionHandler {
            func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
                do {
                    let sum = try request.decodeJSON(as: Sum.self)
                    reply.succeed(encoding: Total(total: sum.numbers.reduce(0, +)))
                } catch {
                    reply.fail(error)
                }
            }
        }
    }
}

/// Raises the soft limit of open files to the hard limit, for tests with many connections.
func raiseFileDescriptorLimit() {
    #if canImport(Glibc)
    let resource = Int32(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    var limit = rlimit()
    getrlimit(resource, &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(resource, &limit)
}
