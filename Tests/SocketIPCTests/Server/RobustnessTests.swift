import NIOCore
import NIOPosix
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Hostile and broken peers", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct RobustnessTests {
    @Test("a peer that dies mid-frame is dropped; the server keeps serving and leaks no file descriptor")
    func peerDiesMidFrame() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            // Warm up, so that lazily opened descriptors (event loop wakers, thread pool) are counted below: on every
            // event loop of both sides, which take connections in turn (with one warm-up connection, the test run
            // alone counted another loop's socket pair, epoll and timer descriptors as a leak; found by a review).
            for _ in 0..<4 {
                _ = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "warm")) }
            }
            let baseline = openFileDescriptorCount()
            for cut in [3, 8, 10, 14] {
                let socket = try await RawSocket.connect(to: path)
                let frame = helloBytes + frameBytes(kind: 0x02, id: 1, payload: Array("half a request".utf8))
                try await socket.write(Array(frame.prefix(cut)))
                socket.close()
            }
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "still serving")) }
            #expect(String(buffer: reply) == "still serving")
            // The server closes its ends as it notices the EOFs; wait for that (bounded), then compare. The count is
            // the whole process's, and tests of other suites run meanwhile, some holding descriptors for tens of
            // seconds (a CLI test waits 20 s for a keepalive with a child's pipes open): hence the long bound. A leak
            // never settles.
            let settled = await eventually(attempts: 6000) { openFileDescriptorCount() <= baseline }
            #expect(settled, "open descriptors: \(openFileDescriptorCount()), before: \(baseline)")
        }
    }

    @Test("connections beyond maximumConnections are closed at once; the others are served")
    func connectionLimit() async throws {
        try await withFramedTestServer(
            configure: { $0.maximumConnections = 2 },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let first = try await Client.connect(to: path)
            let second = try await Client.connect(to: path)
            defer { first.close(); second.close() }
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
            let reply = try await first.request(ByteBuffer(string: "one"))
            #expect(String(buffer: reply) == "one")
        }
    }

    @Test(
        "limits as large as Int allows, fitted to the open file limit, do not trap on an overflow: maximumConnections serves, a reservedDescriptors that leaves no room is invalidConfiguration",
        // The server raises the process's soft limit as far as the hard one: where they differ, that would change what
        // every other test's children inherit.
        .enabled(if: openFileLimits().soft == openFileLimits().hard, "the soft open file limit is below the hard one")
    )
    func largestLimits() async throws {
        try await withFramedTestServer(
            configure: { $0.maximumConnections = .max },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "served")) }
            #expect(String(buffer: reply) == "served")
        }
        let error = await #expect(throws: SocketIPCError.self) {
            try await withFramedTestServer(
                configure: {
                    $0.maximumConnections = .max
                    $0.reservedDescriptors = .max
                },
                makeHandler: { EchoHandler() }
            ) { _, _ in }
        }
        #expect(error?.code == .invalidConfiguration, "\(String(describing: error))")
    }

    @Test("a server that closes a connection right after accepting it makes connect fail at once, not time out")
    func closedRightAway() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/rude.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let accepting = Task {
                try await onOwnThread { close(accept(listener, nil, nil)) }
            }
            var configuration = ClientConfiguration()
            configuration.connectTimeout = .seconds(30)
            let started = ContinuousClock.now
            let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path, configuration: configuration) }
            #expect(error?.code == .connectionClosed)
            #expect(ContinuousClock.now - started < .seconds(30), "failed on the close, not on the timeout")
            _ = try await accepting.value
        }
    }

    @Test("an authorization policy that refuses the peer gives the client a typed unauthorized error")
    func unauthorized() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/auth.sock"
            try await withEchoServer(path: path, configure: { $0.authorization = .users([UInt32.max - 1]) }) { _ in
                let error = await #expect(throws: SocketIPCError.self) {
                    try await Client.withConnection(to: path) { _ = try await $0.request(ByteBuffer(string: "let me in")) }
                }
                #expect(error?.code == .unauthorized)
                // The refusal comes with the server's hello, so connecting fails, not the first call.
                let connectError = await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: path) }
                #expect(connectError?.code == .unauthorized)
            }
            try await withEchoServer(path: path, configure: { $0.authorization = .sameUser }) { _ in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "me")) }
                #expect(String(buffer: reply) == "me")
            }
        }
    }

    @Test(
        "an EOF-style server refuses an unauthorized peer without reading its message, and the client gets an error",
        arguments: ["on the event loop", "collecting"]
    )
    func unauthorizedEOF(handlerKind: String) async throws {
        let handled = Mutex(0)
        let handler: EOFMessageHandler
        if handlerKind == "collecting" {
            handler = .collecting { _, _ in handled.withLock { $0 += 1 }; return ByteBuffer(string: "ok") }
        } else {
            handler = .onEventLoop { _, _ in handled.withLock { $0 += 1 }; return ByteBuffer(string: "ok") }
        }
        try await withEOFTestServer(
            handler: handler,
            configure: { $0.authorization = .users([UInt32.max - 1]) }
        ) { _, path in
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(ByteBuffer(string: "let me in"), to: path)
            }
            #expect(error?.code == .connectionClosed)
        }
        #expect(handled.withLock { $0 } == 0, "the handler never ran")
    }

    @Test("a writer waits while the peer does not read, and memory stays bounded")
    func backpressure() async throws {
        let state = PushState()
        let messageSize = 64 * 1024
        let total = 400  // 25 MiB: far beyond what the socket buffers hold
        try await withFramedTestServer(makeHandler: {
            PushingHandler(state: state, count: total, size: messageSize)
        }) { _, path in
            // A client that says hello and then reads nothing.
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write(helloBytes)
            let stalled = await eventually { state.pushed.load(ordering: .relaxed) > 0 }
            #expect(stalled)
            // The pusher cannot finish while the client does not read: it is suspended in send.
            let task = try #require(state.task.withLock { $0 })
            let progressWhileStalled = state.pushed.load(ordering: .relaxed)
            #expect(progressWhileStalled < total)
            // Now read everything: the pusher finishes.
            let expectedBytes = 8 + total * (5 + messageSize)
            let received = try await socket.read(exactly: expectedBytes)
            #expect(received.count == expectedBytes)
            try await task.value
            #expect(state.pushed.load(ordering: .relaxed) == total)
        }
    }
}

/// Pushes `count` messages of `size` bytes as soon as the connection opens, counting them.
struct PushingHandler: ConnectionHandler {
    let state: PushState
    let count: Int
    let size: Int

    func connectionDidOpen(_ connection: Connection) {
        let payload = ByteBuffer(repeating: 7, count: self.size)
        let count = self.count
        let state = self.state
        state.task.withLock {
            $0 = Task {
                for _ in 0..<count {
                    try await connection.send(payload)
                    state.pushed.add(1, ordering: .relaxed)
                }
            }
        }
    }
}

/// Polls `condition` every 10 ms until it holds, at most `attempts` times (10 s by default); whether it did.
func eventually(attempts: Int = 1000, _ condition: () -> Bool) async -> Bool {
    for _ in 0..<attempts {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// What a ``PushingHandler`` shares with its test.
final class PushState: Sendable {
    let pushed = Atomic<Int>(0)
    let task = Mutex<Task<Void, any Error>?>(nil)
}

/// The process's `RLIMIT_NOFILE`, soft and hard.
private func openFileLimits() -> (soft: UInt64, hard: UInt64) {
    var limit = rlimit()
    #if canImport(Glibc)
    _ = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    #else
    _ = getrlimit(RLIMIT_NOFILE, &limit)
    #endif
    return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
}
