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

@Suite("socket-ipc serve --exec", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServeExecTests {
    @Test("a request is piped to the command; its standard output is the reply")
    func reply() async throws {
        try await withServeCommand(["--exec", "tr a-z A-Z"]) { path, _ in
            let result = try await runCLI(["request", path, "hello, exec"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "reply: \"HELLO, EXEC\"\n")
        }
    }

    @Test("one user's requests waiting for their turn hold at most 64 MiB across its connections: beyond, an error reply at once, the connections going on (before, 200 connections of 100 requests took the server to 1.4 GB)")
    func requestBytesPerUser() async throws {
        // One command at a time, which never ends while the test runs: every other request waits for its turn.
        try await withServeCommand(["--exec-concurrency", "1", "--exec", "cat >/dev/null; exec sleep 600"]) { path, _ in
            let payload = ByteBuffer(repeating: 0x61, count: 1 << 20)
            // 6 connections of 16 requests of 1 MiB: each connection may hold 16 MiB of large requests, the user 64.
            let refusal = try await withThrowingTaskGroup(of: String?.self) { group in
                for _ in 0..<6 {
                    group.addTask {
                        try await Client.withConnection(to: path) { connection in
                            try await withThrowingTaskGroup(of: String?.self) { requests in
                                for _ in 0..<16 {
                                    requests.addTask {
                                        do {
                                            _ = try await connection.request(payload)
                                            return nil
                                        } catch let error as SocketIPCError where error.code == .remoteError {
                                            return error.message
                                        }
                                    }
                                }
                                while let result = try await requests.next() {
                                    if let message = result {
                                        requests.cancelAll()
                                        return message
                                    }
                                }
                                return nil
                            }
                        }
                    }
                }
                // A safety net, not a wait: before the change no request was refused, and all waited.
                group.addTask {
                    try await Task.sleep(for: .seconds(60))
                    return "none refused in 60 s"
                }
                let first = try await group.next() ?? nil
                group.cancelAll()
                return first
            }
            #expect(refusal?.contains("64 MiB of this user's requests") == true, "\(refusal ?? "nil")")
        }
    }

    @Test("replies not yet read count against their user's 64 MiB until the peer reads them: the user's next request is refused (before, 3 connections of 100 requests answered with 16 MB, never read, took the server to 2.9 GB)")
    func unreadRepliesPerUser() async throws {
        try await withServeCommand(["--exec", "cat >/dev/null; head -c 1048576 /dev/zero"]) { path, server in
            // 100 requests, each answered with 1 MiB, and not one reply read: the user may hold 64 MiB of them.
            let descriptor = makeUnixStreamSocket()
            defer { _ = closeDescriptor(descriptor) }
            try #require(connectUnixSocket(descriptor, to: path) == 0, "connect: \(errno)")
            var frames: [UInt8] = Array("SIPC".utf8) + [1, 0, 0, 0]
            for id in UInt32(1)...100 {
                // length 5 + 1, kind 0x02 (request), id, one byte of payload
                frames += [0, 0, 0, 6, 0x02] + withUnsafeBytes(of: id.bigEndian, Array.init) + [0x78]
            }
            try #require(sendWithoutSignal(descriptor, frames) == frames.count)
            let note = await server.standardError.waitForLine(containing: "refused a request")
            #expect(note?.contains("replies not yet read already hold 64 MiB") == true, "\(note ?? "nil")")
            // Another connection of the same user is refused at once, while those replies wait.
            let result = try await runCLI(["request", path, "x"])
            #expect(result.status == 1)
            #expect(result.error.contains("64 MiB of this user's requests waiting for their turn and replies not yet read"), "stderr: \(result.error)")
        }
    }

    @Test("a non-zero exit is an error reply with the command's standard error; the requester exits 1")
    func failure() async throws {
        try await withServeCommand(["--exec", "cat >/dev/null; echo 'no such key' >&2; exit 3"]) { path, server in
            let result = try await runCLI(["request", path, "get colour"])
            #expect(result.status == 1)
            #expect(result.error.contains("exit status 3: no such key"), "stderr: \(result.error)")
            #expect(await server.standardError.waitForLine(containing: "exec failed") != nil)
        }
    }

    @Test("output over --max-message-size is an error reply, and the command is killed")
    func outputTooLarge() async throws {
        try await withServeCommand(["--max-message-size", "1000", "--exec", "yes"]) { path, _ in
            let result = try await runCLI(["request", path, "flood"])
            #expect(result.status == 1)
            #expect(
                result.error.contains("more than the maximum message size of 1000 bytes"), "stderr: \(result.error)")
        }
    }

    @Test("a command that outlasts --exec-timeout is an error reply, and it is killed and reaped")
    func timeout() async throws {
        try await withTemporarySocketDirectory { directory in
            let pidFile = directory + "/child.pid"
            let command = "echo $$ > '\(pidFile)'; exec sleep 30"
            try await withServeCommand(at: directory + "/s.sock", ["--exec-timeout", "0.5", "--exec", command]) { _ in
                let result = try await runCLI(["request", directory + "/s.sock", "wait"])
                #expect(result.status == 1)
                #expect(result.error.contains("did not finish within 0.5 seconds"), "stderr: \(result.error)")
                let text = try String(contentsOfFile: pidFile, encoding: .utf8)
                let pid = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
                // The reply comes after the child is reaped: not even a zombie is left with its pid.
                #expect(kill(pid, 0) == -1 && errno == ESRCH, "the timed-out command \(pid) is still there")
            }
        }
    }

    @Test("a command still running when serve is killed with SIGKILL dies with it (PR_SET_PDEATHSIG), where it ran on")
    func commandDiesWithKilledServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let fifo = directory + "/held"
            #expect(mkfifo(fifo, 0o600) == 0)
            // The shell becomes `sleep` (exec), holding the FIFO open for writing: the reader below sees its end-of-file
            // once that process has ended.
            let command = "exec sleep 300 3>'\(fifo)'"
            let path = directory + "/s.sock"
            try await withServeCommand(at: path, ["--exec", command]) { server in
                let requester = try TestProcess.socketIPC(["request", path, "wait"])
                // Opening the FIFO waits for the command to open it: it runs.
                let reader = open(fifo, O_RDONLY)
                try #require(reader >= 0)
                defer { close(reader) }
                server.signal(SIGKILL)
                #expect(await server.waitForExit() == 128 + SIGKILL)
                let ended = await withCheckedContinuation { continuation in
                    Thread {
                        // A safety net, not a wait: the command's end comes at once; before, it ran for its 300 s.
                        var entry = pollfd(fd: reader, events: Int16(POLLIN), revents: 0)
                        while true {
                            let ready = poll(&entry, 1, 20_000)
                            if ready < 0 && errno == EINTR { continue }
                            guard ready > 0 else { return continuation.resume(returning: false) }
                            var byte: UInt8 = 0
                            let count = read(reader, &byte, 1)
                            if count < 0 && errno == EINTR { continue }
                            return continuation.resume(returning: count == 0)
                        }
                    }.start()
                }
                #expect(ended, "the command outlived the server it was started by")
                #expect(await requester.waitForExit() == 3, "the requester lost its connection")
            }
        }
    }

    @Test("the command gets the peer's identity as ucspi-unix gives it: PROTO, UNIXREMOTEEUID, -EGID, -PID")
    func environment() async throws {
        let command = #"printf '%s' "$PROTO $UNIXREMOTEEUID $UNIXREMOTEEGID $UNIXREMOTEPID $SOCKETIPC_KIND""#
        try await withServeCommand(["--exec", command]) { path, _ in
            let result = try await runCLI(["request", path, ""])
            #expect(result.status == 0, "stderr: \(result.error)")
            let fields = result.output.dropFirst("reply: \"".count).prefix { $0 != "\"" }.split(separator: " ")
            try #require(fields.count == 5, "stdout: \(result.output)")
            #expect(fields[0] == "UNIX")
            #expect(fields[1] == "\(geteuid())" && fields[2] == "\(getegid())")
            #expect((Int32(fields[3]) ?? 0) > 0 && Int32(fields[3]) != getpid(), "the requester's pid: \(fields[3])")
            #expect(fields[4] == "request")
        }
    }

    @Test("EOF-style: the message is piped to the command and its output is the acknowledgement")
    func eofStyle() async throws {
        try await withServeCommand(["--mode", "eof", "--exec", "tr a-z A-Z"]) { path, server in
            let result = try await runCLI(["send", "--eof", path, "quiet please"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "ack: \"QUIET PLEASE\"\n")
            let note = await server.standardError.waitForLine(containing: "connection from")
            #expect(note?.hasPrefix("connection from uid=\(getuid()) gid=\(getgid()) pid=") == true, "\(note ?? "")")
        }
    }

    @Test("EOF-style: one user's messages waiting for their turn hold at most 64 MiB; beyond, a connection is closed without an acknowledgement (before, 150 connections of 4 MiB took the server to 699 MB)")
    func eofMessageBytesPerUser() async throws {
        // One command at a time, which never ends while the test runs: every other message waits for its turn.
        let options = ["--mode", "eof", "--exec-concurrency", "1", "--shutdown-grace-period", "0", "--exec", "cat >/dev/null; exec sleep 600"]
        try await withServeCommand(options) { path, server in
            let message = ByteBuffer(repeating: 0x61, count: 1 << 20)
            // 80 messages of 1 MiB: the user may hold 64 of them.
            let senders = Task {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<80 {
                        group.addTask { _ = try? await Client.sendMessage(message, to: path) }
                    }
                }
            }
            let note = await server.standardError.waitForLine(containing: "without an acknowledgement")
            senders.cancel()
            await senders.value
            #expect(note?.contains("acknowledgements not yet read already hold 64 MiB") == true, "\(note ?? "nil")")
        }
    }

    @Test("EOF-style: acknowledgements not yet read count against their user's 64 MiB until the connection closes")
    func eofAcknowledgementBytesPerUser() async throws {
        // Every command answers with 1 MiB; the clients below half-close and never read it.
        try await withServeCommand(["--mode", "eof", "--exec", "cat >/dev/null; head -c 1048576 /dev/zero"]) { path, server in
            var descriptors: [Int32] = []
            defer { for descriptor in descriptors { _ = closeDescriptor(descriptor) } }
            // 80 connections: the user may hold 64 acknowledgements of 1 MiB.
            for _ in 0..<80 {
                let descriptor = makeUnixStreamSocket()
                descriptors.append(descriptor)
                try #require(connectUnixSocket(descriptor, to: path) == 0, "connect: \(errno)")
                try #require(sendWithoutSignal(descriptor, Array("x".utf8)) == 1)
                try #require(shutdown(descriptor, Int32(SHUT_WR)) == 0)
            }
            let note = await server.standardError.waitForLine(containing: "without an acknowledgement")
            #expect(note?.contains("acknowledgements not yet read already hold 64 MiB") == true, "\(note ?? "nil")")
        }
    }

    @Test("one-way messages run the command too, and the server waits for a running one before it exits")
    func oneWay() async throws {
        try await withTemporarySocketDirectory { directory in
            let output = directory + "/out"
            let started = directory + "/started"
            let path = directory + "/s.sock"
            // The run takes a while after it has started, so that SIGTERM comes while it runs.
            let command = "echo x >> '\(started)'; sleep 0.5; cat >> '\(output)'"
            try await withServeCommand(at: path, ["--exec", command]) { server in
                let sent = try await runCLI(["send", path, "one-way"])
                #expect(sent.status == 0, "stderr: \(sent.error)")
                try await waitUntilFile(started, hasLines: 1)
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
            }
            #expect((try? String(contentsOfFile: output, encoding: .utf8)) == "one-way")
        }
    }

    @Test("--exec-concurrency bounds the commands running at once; the requests beyond it wait and get their replies")
    func concurrencyLimit() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            // Under a lock: count the commands alive in `alive` and log each count in `counts`; the run lasts a
            // while, so that commands unbounded would overlap.
            let (lock, alive, counts) = (directory + "/lock", directory + "/alive", directory + "/counts")
            try "0\n".write(toFile: alive, atomically: true, encoding: .utf8)
            let update = { (step: String) in
                "flock '\(lock)' sh -c 'n=$(($(cat \"\(alive)\") \(step))); "
                    + "echo $n > \"\(alive)\"; echo $n >> \"\(counts)\"'"
            }
            let command = "cat >/dev/null; \(update("+ 1")); sleep 0.3; \(update("- 1")); echo ok"
            try await withServeCommand(at: path, ["--exec-concurrency", "2", "--exec", command]) { _ in
                let result = try await runCLI(["request", path, "--count", "6", "--concurrency", "6", "x"])
                #expect(result.status == 0, "stderr: \(result.error)")
                #expect(result.output.contains("6 requests"), "stdout: \(result.output)")
            }
            let log = try String(contentsOfFile: counts, encoding: .utf8).split(separator: "\n").compactMap { Int($0) }
            // Six starts and six ends, never more than two alive.
            #expect(log.count == 12, "counts: \(log)")
            #expect(log.allSatisfy { (0...2).contains($0) }, "counts: \(log)")
            #expect(log.last == 0)
        }
    }

    @Test("a request waiting for its turn is dropped when its connection closes: its command never starts")
    func waitingRequestCancelled() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let (starts, go) = (directory + "/starts", directory + "/go")
            // Each run logs its start, then holds its turn until the test creates `go`.
            let command = "echo x >> '\(starts)'; while [ ! -e '\(go)' ]; do sleep 0.05; done; echo ok"
            try await withServeCommand(at: path, ["--exec-concurrency", "1", "--exec", command]) { server in
                // A generous timeout: the first waits for the test's `go`, which comes after the other has given up.
                let first = try TestProcess.socketIPC(["request", "--timeout", "120", path, "first"])
                try await withProcess(first) { first in
                    try await waitUntilFile(starts, hasLines: 1)
                    // Waits behind the first, gives up and closes its connection (the server's third line).
                    let waiting = try await runCLI(["request", "--timeout", "0.3", path, "gives up"])
                    #expect(waiting.status != 0, "stdout: \(waiting.output)")
                    _ = await server.standardError.waitForLine(containing: "connection closed")
                    #expect(FileManager.default.createFile(atPath: go, contents: nil))
                    #expect(await first.waitForExit() == 0)
                }
                // Had the request that gave up kept its place, it would run before this one.
                let last = try await runCLI(["request", path, "last"])
                #expect(last.output == #"reply: "ok\n""# + "\n", "stderr: \(last.error)")
            }
            let lines = try String(contentsOfFile: starts, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 2, "runs started: \(lines.count)")
        }
    }

    #if os(Linux)
        @Test(
            "one-way messages that outlive their connections are bounded per user: past 64 MiB waiting (each counted as at least 4 KiB), a connection is closed",
            arguments: [1 << 20, 0]
        )
        func oneWayMessagesBoundedPerUser(size: Int) async throws {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/s.sock"
                let options = ["--exec-concurrency", "1", "--shutdown-grace-period", "0", "--exec", "sleep 30"]
                try await withServeCommand(at: path, options) { server in
                    let message = ByteBuffer(repeating: 0x61, count: size)
                    // What the budget takes: 64 messages of 1 MiB, or 16,384 empty ones (4 KiB each).
                    let budget = (64 << 20) / max(size, 4 << 10)
                    // Connections that each send 15 messages (below the 16 one connection may have pending) and close
                    // at once: their runs wait, and before, nothing bounded them all together (nor empty ones at all).
                    var refused = false
                    for _ in 0..<(budget / 15 + 2) where !refused {
                        let connection = try await Client.connect(to: path)
                        do {
                            for _ in 0..<15 { try await connection.send(message) }
                        } catch {
                            refused = true
                        }
                        connection.close()
                        await connection.waitUntilClosed()
                    }
                    // Empty messages are all sent before the server's close can reach the client: only the server's
                    // note tells then (without the budget for them it would never come, and the test would time out).
                    if size > 0 {
                        #expect(refused, "the server took \(budget / 15 + 2) connections of 15 messages of \(size) bytes")
                    }
                    if refused || size == 0 {
                        let note = await server.standardError.waitForLine(containing: "its user's one-way messages")
                        #expect(note?.contains("already hold 64 MiB") == true, "\(note ?? "no note")")
                    }
                    server.signal(SIGTERM)
                    #expect(await server.waitForExit() == 0)
                }
            }
        }
    #endif

    #if os(Linux)
        /// SIGTERM then drops the queued runs and kills the running one after the grace period.
        @Test("a flood of one-way messages closes the connection at 16 pending; the server's memory stays bounded")
        func oneWayFlood() async throws {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/s.sock"
                let pids = directory + "/pids"
                let options = [
                    "--exec-concurrency", "1", "--shutdown-grace-period", "1",
                    // A command that ends by itself writes `finished`: one killed at the grace period never does.
                    "--exec", "echo $$ >> '\(pids)'; sleep 30; echo finished >> '\(pids)'",
                ]
                try await withServeCommand(at: path, options) { server in
                    let before = try #require(residentKilobytes(of: server.processID))
                    let connection = try await Client.connect(to: path)
                    let megabyte = ByteBuffer(repeating: 0x61, count: 1 << 20)
                    var sent = 0
                    do {
                        // 200 × 1 MiB: far past the 16 pending that close the connection, and light enough for a
                        // loaded machine.
                        for _ in 0..<200 {
                            try await connection.send(megabyte)
                            sent += 1
                        }
                    } catch {}
                    connection.close()
                    await connection.waitUntilClosed()
                    #expect(sent < 200, "the server took all 200 messages")
                    let note = await server.standardError.waitForLine(containing: "closing connection")
                    #expect(note?.contains("more one-way messages than --exec keeps waiting (16)") == true)
                    let after = try #require(residentKilobytes(of: server.processID))
                    #expect(after - before < 100 * 1024, "VmRSS went from \(before) kB to \(after) kB")

                    // The first command runs (the others wait for its turn): SIGTERM gives it the grace period.
                    try await waitUntilFile(pids, hasLines: 1)
                    server.signal(SIGTERM)
                    #expect(await server.waitForExit() == 0)
                }
                let lines = try String(contentsOfFile: pids, encoding: .utf8).split(separator: "\n")
                // Only the first ever started (the queued ones were dropped), it was killed before it finished, and
                // none is left.
                #expect(lines.count == 1, "started: \(lines)")
                #expect(!lines.contains("finished"), "the command ran to its end: the grace period did not end it")
                for pid in lines.compactMap({ Int32($0) }) {
                    #expect(kill(pid, 0) == -1 && errno == ESRCH, "the command \(pid) is still there")
                }
            }
        }
    #endif

    @Test("a second SIGTERM or SIGINT stops serve at once: the commands still running are killed, the socket file removed, without waiting out --shutdown-grace-period (before, an hour)")
    func secondSignalStopsNow() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let pids = directory + "/pids"
            let options = [
                "--shutdown-grace-period", "3600", "--exec-timeout", "3600", "--exec", "echo $$ >> '\(pids)'; sleep 3600",
                // The service group's "Service lifecycle ended" says when the first signal's graceful shutdown has
                // drained the server and the group has returned: only the one-way run is left.
                "--log-level", "debug",
            ]
            try await withServeCommand(at: path, options) { server in
                let sent = try await runCLI(["send", path, "one-way"])
                #expect(sent.status == 0, "stderr: \(sent.error)")
                try await waitUntilFile(pids, hasLines: 1)
                // The first begins the graceful shutdown, which would wait an hour for the command; the second, once
                // the server has drained and only the one-way run is left (as a person's second Ctrl-C comes), ends
                // it. Before, only a second signal sent at the same instant as the first did: later ones were lost.
                server.signal(SIGTERM)
                let ended = await server.standardError.waitForLine(containing: "Service lifecycle ended")
                #expect(ended != nil, "the server did not drain")
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0, "serve was killed at its time limit: the second signal did not stop it")
                let note = await server.standardError.waitForLine(containing: "second shutdown signal")
                #expect(note?.hasSuffix("(SIGTERM): stopping now, without the rest of the grace period") == true, "\(note ?? "")")
            }
            #expect(access(path, F_OK) == -1, "the socket file is left behind")
            let lines = try String(contentsOfFile: pids, encoding: .utf8).split(separator: "\n")
            for pid in lines.compactMap({ Int32($0) }) {
                #expect(kill(pid, 0) == -1 && errno == ESRCH, "the command \(pid) is still there")
            }
        }
    }

    #if os(Linux)
        @Test("the command inherits no descriptor but its standard input, output and error")
        func noLeakedDescriptors() async throws {
            try await withServeCommand(["--exec", "ls /proc/self/fd"]) { path, _ in
                let result = try await runCLI(["request", path, "x"])
                #expect(result.status == 0, "stderr: \(result.error)")
                // `ls` itself holds the directory it lists open: 3.
                #expect(result.output == #"reply: "0\n1\n2\n3\n""# + "\n")
            }
        }

        @Test(
            "a command gets the soft descriptor limit serve started with, not the one the server raised for its connections (a select(2) program breaks above 1024)",
            .enabled(if: hardDescriptorLimit() > 4096, "needs a hard RLIMIT_NOFILE above 4096 for the server to raise")
        )
        func descriptorLimit() async throws {
            try await withServeCommand(["--exec", "ulimit -S -n"], shellSetup: "ulimit -S -n 512") { path, server in
                // The server itself raised its soft limit for --max-connections (10,000 by default).
                let limits = try String(contentsOfFile: "/proc/\(server.processID)/limits", encoding: .utf8)
                let line = try #require(limits.split(separator: "\n").first { $0.hasPrefix("Max open files") })
                let soft = line.split(whereSeparator: \.isWhitespace).dropFirst(3).first.flatMap { Int($0) }
                #expect((soft ?? 0) > 512, "\(line)")
                let result = try await runCLI(["request", path, "x"])
                #expect(result.status == 0, "stderr: \(result.error)")
                // Before, the command's limit was the server's (10,256 here).
                #expect(result.output == #"reply: "512\n""# + "\n")
            }
        }
    #endif
}

#if os(Linux)
    /// The hard `RLIMIT_NOFILE` of this process.
    private func hardDescriptorLimit() -> UInt64 {
        var limit = rlimit()
        return getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 ? UInt64(limit.rlim_max) : 0
    }
#endif

