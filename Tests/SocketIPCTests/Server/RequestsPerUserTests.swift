import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// `ServerConfiguration.maximumConcurrentRequestsPerUser`: one user's requests in progress (version 1, kind `0x02`)
/// across all of its connections are bounded, not only each connection's (before, 100 on each of 1,024 connections:
/// 102,400 handlers at once). At the bound a connection pauses, as at its own limit; nothing is refused.
@Suite("Requests in progress per user", .timeLimit(.minutes(2)), .limitedConcurrency)
struct RequestsPerUserTests {
    /// The requests handed to the handler, kept unanswered until ``answerAll()``; answered at once after it.
    final class Parked: Sendable {
        private struct State {
            var waiting: [(reply: Reply, request: ByteBuffer)] = []
            var answering = false
            var handedOut = 0
        }
        private let state = Mutex(State())
        /// One element per connection closed, once the server no longer counts its requests.
        let closes = AsyncStream<Void>.makeStream()

        func take(_ request: ByteBuffer, reply: Reply) {
            let now = self.state.withLock { state in
                state.handedOut += 1
                if !state.answering { state.waiting.append((reply, request)) }
                return state.answering
            }
            if now { reply.succeed(request) }
        }

        /// How many requests were handed to the handler so far.
        var handedOut: Int { self.state.withLock { $0.handedOut } }

        /// Answers the requests kept, and every later one at once.
        func answerAll() {
            let waiting = self.state.withLock { state in
                state.answering = true
                defer { state.waiting = [] }
                return state.waiting
            }
            for (reply, request) in waiting { reply.succeed(request) }
        }
    }

    struct ParkingHandler: ConnectionHandler {
        let parked: Parked

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            self.parked.take(request, reply: reply)
        }

        func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
            self.parked.closes.continuation.yield()
        }
    }

    /// The user id of the other user's peer.
    static let otherUser: UInt32 = 65534

    /// Connects (as `user`, or as this process's own) and says hello, speaking calls so that pings are answered.
    static func connect(to path: String, asUser user: UInt32? = nil) async throws -> RawSocket {
        let peer = try await RawSocket.connect(to: path, asUser: user)
        try await peer.write(callsPeerHelloBytes)
        // Its flags say whether it passes descriptors.
        #expect(try await peer.read(exactly: 8).prefix(5) == serverHelloBytes.prefix(5))
        return peer
    }

    /// Sends requests `ids` on `peer`, then a ping: once the pong is back, every request before it was handed to the
    /// handler or held by a pause (a paused connection still answers pings). Returns the replies that came before it.
    static func send(_ ids: ClosedRange<UInt32>, on peer: RawSocket, ping: UInt32) async throws -> [WireFrame] {
        let requests = ids.flatMap { frameBytes(kind: 0x02, id: $0, payload: Array("r\($0)".utf8)) }
        try await peer.write(requests + pingBytes(id: ping))
        var answers: [WireFrame] = []
        while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await peer.readFrames(1) }
        return answers.filter { $0.kind != 0x0c }
    }

    /// Reads frames from `peer` until the replies to `ids` (kind `0x03`, each its own payload) have all come.
    static func replies(_ ids: ClosedRange<UInt32>, on peer: RawSocket) async throws -> [UInt32] {
        var seen: [UInt32] = []
        while seen.count < ids.count {
            for frame in try await peer.readFrames(1) where frame.kind == 0x03 {
                #expect(frame.payload == Array("r\(frame.id ?? 0)".utf8))
                seen.append(frame.id ?? 0)
            }
        }
        return seen.sorted()
    }

    @Test("a user's connection pauses once the user has the bound in progress across its connections, and another of its connections before its first request; another user's requests go on; once they are answered, every request is served")
    func boundedAcrossConnections() async throws {
        let parked = Parked()
        try await withFramedTestServer(
            configure: { configuration in
                configuration.maximumConcurrentRequestsPerUser = 8
                configuration.authorization = .sameUser || .users([Self.otherUser])
            },
            makeHandler: { ParkingHandler(parked: parked) }
        ) { _, path in
            let first = try await Self.connect(to: path)
            defer { first.close() }
            #expect(try await Self.send(1...20, on: first, ping: 1).isEmpty)
            #expect(parked.handedOut == 8, "the eighth request reaches the bound: the other 12 wait in the connection")

            // The same user's second connection hands out none: its requests wait unread (found by a review: each
            // connection handed out one more, so 800 connections at a bound of 50 had 849 in progress).
            let second = try await Self.connect(to: path)
            defer { second.close() }
            #expect(try await Self.send(1...3, on: second, ping: 1).isEmpty)
            #expect(parked.handedOut == 8, "the second connection pauses before its first request")
            // So does a new one whose request comes in its hello's write (found by a test: put back, the hello was
            // then read as a frame).
            let third = try await RawSocket.connect(to: path)
            defer { third.close() }
            try await third.write(callsPeerHelloBytes + frameBytes(kind: 0x02, id: 1, payload: Array("r1".utf8)) + pingBytes(id: 1))
            #expect(try await third.read(exactly: 8) == serverHelloBytes)
            #expect(try await third.readFrames(1).map(\.kind) == [0x0c], "the pong, and no reply")
            #expect(parked.handedOut == 8, "the third connection's request waits")

            // Another user is not held back by this one.
            let other = try await Self.connect(to: path, asUser: Self.otherUser)
            defer { other.close() }
            #expect(try await Self.send(1...5, on: other, ping: 1).isEmpty)
            #expect(parked.handedOut == 13, "the other user's five requests are handed out")

            // Answered, the user's requests make room: both connections go on, and every request is answered.
            parked.answerAll()
            #expect(try await Self.replies(1...20, on: first) == Array(1...20))
            #expect(try await Self.replies(1...3, on: second) == Array(1...3))
            #expect(try await Self.replies(1...5, on: other) == Array(1...5))
            #expect(try await Self.replies(1...1, on: third) == [1])
            #expect(parked.handedOut == 29)
        }
    }

    @Test(
        "a closed connection's unanswered requests no longer count: the user's other connection goes on; the same with descriptor passing on (found by a review: its requests were checked after they were handed out)",
        arguments: [0, 4]
    )
    func closeGivesRequestsBack(maximumDescriptors: Int) async throws {
        let parked = Parked()
        try await withFramedTestServer(
            configure: {
                $0.maximumConcurrentRequestsPerUser = 4
                $0.connection.maximumDescriptorsPerMessage = maximumDescriptors
            },
            makeHandler: { ParkingHandler(parked: parked) }
        ) { _, path in
            let first = try await Self.connect(to: path)
            #expect(try await Self.send(1...4, on: first, ping: 1).isEmpty)
            #expect(parked.handedOut == 4)
            let second = try await Self.connect(to: path)
            defer { second.close() }
            #expect(try await Self.send(1...3, on: second, ping: 1).isEmpty)
            #expect(parked.handedOut == 4, "the second connection pauses before its first request")

            // The first connection goes: its four unanswered requests no longer count, and the second goes on with
            // its three and a fourth, which takes the user to the bound again.
            first.close()
            var closes = parked.closes.stream.makeAsyncIterator()
            _ = await closes.next()
            #expect(try await Self.send(4...5, on: second, ping: 2).isEmpty)
            // The close wakes the second connection on its own event loop, which may answer the ping first (pings
            // pass a paused connection): wait for its requests, then see that the fifth stays held.
            let resumed = await eventually { parked.handedOut >= 8 }
            #expect(resumed, "the second connection's first four requests are handed out: \(parked.handedOut)")
            try await second.write(pingBytes(id: 3))
            var answers: [WireFrame] = []
            while !answers.contains(where: { $0.kind == 0x0c }) { answers += try await second.readFrames(1) }
            #expect(answers.map(\.kind) == [0x0c], "the pong, and no reply")
            #expect(parked.handedOut == 8, "the second connection's first four requests are handed out, not the fifth")
        }
    }
}
