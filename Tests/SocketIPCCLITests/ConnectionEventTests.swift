import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a library client learns when its connection to a real `socket-ipc serve` process ends: a graceful shutdown,
/// a kill, a freeze found by keepalive, its own close, and a refusal. `Connection.closeReason` and the handler's
/// `connectionDidClose(_:error:)` must tell them apart, and agree.
@Suite("Connection events: why a client's connection to a server process closed", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectionEventTests {
    @Test("a server shut down gracefully (SIGTERM): closeReason and connectionDidClose say peerGoingAway and why")
    func serverShutDownGracefully() async throws {
        try await withServeCommand { path, server in
            let client = try await RecordingClient.connect(to: path)
            #expect(String(buffer: try await client.connection.request(ByteBuffer(string: "hi"))) == "hi")
            #expect(client.connection.closeReason == nil, "an open connection has no close reason")

            server.signal(SIGTERM)
            await client.connection.waitUntilClosed()
            let reported = await client.reportedClose()
            #expect(await server.waitForExit() == 0)

            let reason = try #require(client.connection.closeReason)
            #expect(reason.code == .peerGoingAway)
            #expect(reason.message.contains("the server is shutting down"), "\(reason)")
            #expect(reported == reason, "connectionDidClose got \(String(describing: reported))")
            #expect(!client.connection.isOpen)
        }
    }

    @Test("a server killed with SIGKILL: closeReason and connectionDidClose say connectionClosed, without going away")
    func serverKilled() async throws {
        try await withServeCommand { path, server in
            let client = try await RecordingClient.connect(to: path)
            #expect(String(buffer: try await client.connection.request(ByteBuffer(string: "hi"))) == "hi")

            server.signal(SIGKILL)
            #expect(await server.waitForExit() == 128 + SIGKILL)
            await client.connection.waitUntilClosed()
            let reported = await client.reportedClose()

            let reason = try #require(client.connection.closeReason)
            #expect(reason.code == .connectionClosed)
            #expect(reason.code != .peerGoingAway, "a kill must not read as a graceful shutdown")
            #expect(reason.message.contains("without going away"), "\(reason)")
            #expect(reported == reason, "connectionDidClose got \(String(describing: reported))")
        }
    }

    @Test(
        "a server killed with a request of the client unread in its socket: connectionClosed, the same in both reports",
        .enabled(if: runsOnLinux, "needs Linux's SIOCOUTQ to see the bytes the server has not read")
    )
    func serverKilledWithUnreadRequest() async throws {
        let killed = try await killServerWithUnreadRequest()
        #expect(killed.requestFailure?.code == .connectionClosed, "\(String(describing: killed.requestFailure))")
        #expect(killed.reason.code == .connectionClosed, "\(killed.reason)")
        #expect(killed.reason.code != .peerGoingAway, "a kill must not read as a graceful shutdown")
        #expect(killed.reported == killed.reason, "connectionDidClose got \(String(describing: killed.reported))")
    }

    @Test(
        "a server killed with a request of the client unread in its socket: the message says it did not go away",
        .enabled(if: runsOnLinux, "needs Linux's SIOCOUTQ to see the bytes the server has not read")
    )
    func serverKilledWithUnreadRequestMessage() async throws {
        let killed = try await killServerWithUnreadRequest()
        #expect(killed.reason.message.contains("without going away"), "\(killed.reason)")
    }

    @Test("a request in flight when the server is killed fails with connectionClosed saying it did not go away (before: 'the connection is closed')")
    func requestInFlightWhenKilled() async throws {
        let failure = try await requestInFlight { server in
            server.signal(SIGKILL)
            #expect(await server.waitForExit() == 128 + SIGKILL)
        }
        #expect(failure?.code == .connectionClosed, "\(String(describing: failure))")
        #expect(failure?.message.contains("without going away: it exited, crashed or was killed") == true, "\(String(describing: failure))")
    }

    @Test("a request in flight when the server's shutdown grace period ends fails with connectionClosed saying the server went away and why (before: 'the connection is closed')")
    func requestInFlightAtEndOfGracePeriod() async throws {
        let failure = try await requestInFlight(["--shutdown-grace-period", "0.2"]) { server in
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
        }
        #expect(failure?.code == .connectionClosed, "\(String(describing: failure))")
        #expect(failure?.message.contains("before this ended, after going away") == true, "\(String(describing: failure))")
        #expect(failure?.message.contains("the server is shutting down") == true, "\(String(describing: failure))")
    }

    /// Starts `serve --exec` with a command that does not end, sends a request and, once its command runs, does
    /// `stop` to the server; returns how the request failed.
    private func requestInFlight(
        _ options: [String] = [],
        stop: (TestProcess) async throws -> Void
    ) async throws -> SocketIPCError? {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let started = directory + "/started"
            let command = "echo x >> '\(started)'; exec sleep 3600"
            return try await withServeCommand(at: path, options + ["--exec-timeout", "3600", "--exec", command]) { server in
                let client = try await RecordingClient.connect(to: path)
                let request = Task { try await client.connection.request(ByteBuffer(string: "forever")) }
                try await waitUntilFile(started, hasLines: 1)
                try await stop(server)
                return await #expect(throws: SocketIPCError.self) { _ = try await request.value }
            }
        }
    }

    /// Connects to a `serve` process, freezes it, sends a request (which it cannot read) and kills it once the
    /// request waits in its socket: it closes its socket with the request unread, which Linux reports to the client
    /// as ECONNRESET rather than end-of-stream.
    private func killServerWithUnreadRequest() async throws -> (
        reason: SocketIPCError, reported: SocketIPCError??, requestFailure: SocketIPCError?
    ) {
        try await withServeCommand { path, server in
            let client = try await RecordingClient.connect(to: path)
            try await freeze(server)
            let request = Task { try await client.connection.request(ByteBuffer(string: "never read")) }
            try await waitUntilUnread(byServer: server.processID)
            server.signal(SIGKILL)
            server.signal(SIGCONT)
            #expect(await server.waitForExit() == 128 + SIGKILL)
            await client.connection.waitUntilClosed()
            let reported = await client.reportedClose()
            let failure = await #expect(throws: SocketIPCError.self) { _ = try await request.value }
            return (try #require(client.connection.closeReason), reported, failure)
        }
    }

    @Test("a server frozen with SIGSTOP is found by keepalive: the connection closes with peerNotResponding")
    func frozenServerFoundByKeepalive() async throws {
        try await withServeCommand { path, server in
            var configuration = ClientConfiguration()
            configuration.connection.keepaliveInterval = .milliseconds(200)
            configuration.connection.keepaliveTimeout = .milliseconds(500)
            let client = try await RecordingClient.connect(to: path, configuration: configuration)
            try await freeze(server)
            let request = Task { try await client.connection.request(ByteBuffer(string: "unanswered")) }
            // The real keepalive deadline is what ends this wait.
            await client.connection.waitUntilClosed()
            let failure = await #expect(throws: SocketIPCError.self) { _ = try await request.value }
            #expect(failure?.code == .peerNotResponding, "a request in flight: \(String(describing: failure))")
            let reported = await client.reportedClose()
            let reason = try #require(client.connection.closeReason)
            #expect(reason.code == .peerNotResponding, "\(reason)")
            #expect(reported == reason, "connectionDidClose got \(String(describing: reported))")

            server.signal(SIGKILL)
            server.signal(SIGCONT)
            #expect(await server.waitForExit() == 128 + SIGKILL)
        }
    }

    @Test("without keepalive (the default) a frozen server does not close the connection; its kill then does")
    func frozenServerWithoutKeepalive() async throws {
        try await withServeCommand { path, server in
            let client = try await RecordingClient.connect(to: path)
            try await freeze(server)
            // As long as the keepalive test above takes to notice the freeze (200 + 500 ms), and a little more. A
            // bounded wait that asserts an absence.
            try await Task.sleep(for: .seconds(1))
            #expect(client.connection.isOpen, "nothing should close a connection to a frozen server without keepalive")
            #expect(client.connection.closeReason == nil)

            server.signal(SIGKILL)
            server.signal(SIGCONT)
            #expect(await server.waitForExit() == 128 + SIGKILL)
            await client.connection.waitUntilClosed()
            #expect(client.connection.closeReason?.code == .connectionClosed)
            #expect(await client.reportedClose() == client.connection.closeReason)
        }
    }

    @Test("the client closing its connection itself: closeReason and connectionDidClose's error are nil", arguments: [
        "close", "abort",
    ])
    func clientClosesItself(how: String) async throws {
        try await withServeCommand { path, server in
            let client = try await RecordingClient.connect(to: path)
            #expect(String(buffer: try await client.connection.request(ByteBuffer(string: "hi"))) == "hi")
            if how == "close" { client.connection.close() } else { client.connection.abort() }
            await client.connection.waitUntilClosed()
            #expect(await client.reportedClose() == .some(nil))
            #expect(client.connection.closeReason == nil)
            #expect(!client.connection.isOpen)

            // The server was not disturbed: it serves the next client, and shuts down cleanly.
            let again = try await runCLI(["request", "--socket", path, "next"])
            #expect(again.status == 0, "stderr: \(again.error)")
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
        }
    }

    @Test("serve --allow-uid only adds users: the server's own user (and root) are still served")
    func allowUserKeepsOwnUser() async throws {
        // `serve` always admits its own user and root (AccessOptions.policy is `.sameUser || .users(...)`), so no
        // option of `serve` can refuse the process that runs these tests; the refusal itself is tested below with a
        // server whose policy is the one `--allow-uid` adds, alone.
        try await withServeCommand(["--allow-uid", "\(otherUserID)"]) { path, _ in
            let client = try await RecordingClient.connect(to: path)
            defer { client.connection.close() }
            #expect(String(buffer: try await client.connection.request(ByteBuffer(string: "me"))) == "me")
        }
    }

    @Test("a server whose policy refuses this process: connect throws unauthorized with the server's reason")
    func refused() async throws {
        try await withFramedTestServer(
            configure: { $0.authorization = .users([otherUserID]) },
            makeHandler: { AsyncRequestHandler { request, _ in request } }
        ) { _, path in
            let (closes, reported) = AsyncStream.makeStream(of: SocketIPCError?.self)
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.connect(to: path, handler: CloseRecordingHandler(reported: reported))
            }
            #expect(error?.code == .unauthorized)
            #expect(error?.message.contains("uid") == true, "the refusal says why: \(String(describing: error))")
            // The refused connection's handler is told why it closed.
            var iterator = closes.makeAsyncIterator()
            let close = await iterator.next()
            #expect(close??.code == .unauthorized, "connectionDidClose got \(String(describing: close))")
        }
    }
}

/// Waits until this process's connection to the server process `serverID` has bytes in the server's socket that the
/// server has not read, polling the client socket's `SIOCOUTQ` (Linux: for a Unix socket, the bytes written and not
/// yet read by the peer). The condition, not a time, ends the wait; 1000 polls are a safety net.
private func waitUntilUnread(byServer serverID: pid_t) async throws {
    for _ in 0..<1000 {
        if let unread = unreadBytesOfConnection(toProcess: serverID), unread > 0 { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("the connection to process \(serverID) never had bytes waiting in the server's socket")
}

/// The bytes written on this process's connection to the process `serverID` (the socket whose peer is that process,
/// by `SO_PEERCRED`) that the server has not read yet; `nil` when there is no such socket.
private func unreadBytesOfConnection(toProcess serverID: pid_t) -> Int? {
    #if os(Linux)
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return nil }
        for descriptor in entries.compactMap({ Int32($0) }) {
            // Glibc's `struct ucred` (pid, uid, gid), which Swift does not import without _GNU_SOURCE.
            var credentials: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
            var length = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
            guard getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0,
                length == socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size), credentials.pid == serverID
            else { continue }
            var queued: Int32 = 0
            guard ioctl(descriptor, UInt(TIOCOUTQ), &queued) == 0 else { return nil }
            return Int(queued)
        }
    #endif
    return nil
}

/// A client connection whose handler records what `connectionDidClose(_:error:)` was told.
private struct RecordingClient {
    let connection: Connection
    private let closes: AsyncStream<SocketIPCError?>

    static func connect(to path: String, configuration: ClientConfiguration = .init()) async throws -> RecordingClient {
        let (closes, reported) = AsyncStream.makeStream(of: SocketIPCError?.self)
        let connection = try await Client.connect(
            to: path,
            configuration: configuration,
            handler: CloseRecordingHandler(reported: reported)
        )
        return RecordingClient(connection: connection, closes: closes)
    }

    /// Waits for the handler's `connectionDidClose`, and returns the error it got: `.some(nil)` for none.
    func reportedClose() async -> SocketIPCError?? {
        var iterator = self.closes.makeAsyncIterator()
        return await iterator.next()
    }
}

/// Passes the error of `connectionDidClose(_:error:)` to `reported`, once.
private struct CloseRecordingHandler: ConnectionHandler, Sendable {
    let reported: AsyncStream<SocketIPCError?>.Continuation

    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        self.reported.yield(error)
        self.reported.finish()
    }
}
