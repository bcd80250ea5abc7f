import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 13, passing descriptors from the command line: `send --fd` passes files, `listen --max-descriptors` prints
/// what each one is, and a peer killed in the middle of passing them leaves no descriptor behind in the server.
@Suite("socket-ipc: passing descriptors", .timeLimit(.minutes(5)), .limitedConcurrency)
struct DescriptorPassingCLITests {
    static let python = "/usr/bin/python3"
    static let hasPython = FileManager.default.isExecutableFile(atPath: python)

    @Test("send --fd passes open files; listen prints the path, type and size of each with the message")
    func sendAndListen() async throws {
        try await withListenCommand(["--max-descriptors", "2", "--count", "1"]) { path, listener in
            let file = (path as NSString).deletingLastPathComponent + "/passed.txt"
            try "twelve bytes".write(toFile: file, atomically: true, encoding: .utf8)
            let sent = try await runCLI(["send", "--fd", file, "--fd", "/dev/null", path, "take these"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(sent.output == "sent 10 bytes\n")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            try #require(lines.count == 2, "stdout: \(lines)")
            #expect(lines[0].hasSuffix(" with descriptors: \(file) (file, 12 bytes); /dev/null (character device)"))
            #expect(lines[1] == "  take these")
        }
    }

    @Test("listen --format json gives a passed file's path as it is, escaped once by JSON (before, a quote or tab in it came out escaped twice)")
    func jsonPathEscapedOnce() async throws {
        try await withListenCommand(["--max-descriptors", "1", "--count", "1", "--format", "json"]) { path, listener in
            let file = (path as NSString).deletingLastPathComponent + "/a \"quoted\"\tname"
            try "x".write(toFile: file, atomically: true, encoding: .utf8)
            let sent = try await runCLI(["send", "--fd", file, path, "one"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            try #require(lines.count == 1, "stdout: \(lines)")
            let object = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
            let descriptors = object?["descriptors"] as? [[String: Any]]
            #expect(descriptors?.first?["path"] as? String == file, "stdout: \(lines[0])")
        }
    }

    @Test("send --fd of a FIFO that no one writes to passes it at once, without waiting in open(2) for a writer")
    func fifoWithoutWriter() async throws {
        try await withListenCommand(["--max-descriptors", "1", "--count", "1"]) { path, listener in
            let fifo = (path as NSString).deletingLastPathComponent + "/passed.fifo"
            try #require(mkfifo(fifo, 0o600) == 0)
            // Before, open(2) waited for a writer that never came, and --timeout did not end it.
            let sent = try await runCLI(["send", "--timeout", "20", "--fd", fifo, path, "a pipe"])
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            try #require(lines.count == 2, "stdout: \(lines)")
            #expect(lines[0].hasSuffix(" with descriptors: \(fifo) (pipe)"), "stdout: \(lines)")
        }
    }

    @Test(
        "a server out of descriptors that cannot take those passed to it says so (going-away 0x05): not a protocol violation of its honest peer, and not `sent`",
        .enabled(if: toolExists("prlimit"), "needs util-linux's prlimit (Linux only)")
    )
    func serverOutOfDescriptors() async throws {
        try await withServeCommand(["--max-descriptors", "32"]) { path, server in
            let listed = try await runShell("ls /proc/\(server.processID)/fd | wc -l")
            let open = try #require(Int(String(decoding: listed.output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
            // Room for the connection's own descriptors (its socket, the relay's pair), not for 20 passed ones.
            let lowered = try await runShell("prlimit --pid \(server.processID) --nofile=\(open + 6):\(open + 6)")
            #expect(lowered.status == 0)
            let files = Array(repeating: ["--fd", "/dev/null"], count: 20).flatMap { $0 }
            let sent = try await runCLI(["send"] + files + [path, "take these"])
            #expect(sent.status == 1, "stderr: \(sent.error)")
            #expect(sent.output.isEmpty, "stdout: \(sent.output)")
            #expect(
                sent.error.contains("the peer closed the connection: it is short of a resource: out of file descriptors"),
                "stderr: \(sent.error)"
            )
            let logged = await server.standardError.waitForLine(containing: "closing connection")
            #expect(logged?.contains("resourceExhausted: out of file descriptors") == true, "log: \(logged ?? "none")")
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
            #expect(!(await server.standardError.text()).contains("protocol"))
        }
    }

    @Test("send --fd to a server that accepts no descriptors exits 4 and says how to start it; nothing is sent")
    func serverWithout() async throws {
        try await withListenCommand(["--count", "1"]) { path, listener in
            let refused = try await runCLI(["send", "--fd", "/dev/null", path, "x"])
            #expect(refused.status == 4)
            #expect(refused.error.contains("does not accept descriptors (start it with --max-descriptors 1 or more)"))
            #expect(try await runCLI(["send", path, "plain"]).status == 0)
            #expect(await listener.waitForExit() == 0)
            let lines = await listener.standardOutput.remainingLines()
            #expect(lines.count == 2 && lines.last == "  plain", "stdout: \(lines)")
        }
    }

    /// A peer (a Python process) that says hello with the descriptors flag, passes two descriptors with a descriptors
    /// frame and `tail` after it, then kills itself with SIGKILL.
    static func killedPeer(path: String, tail: String) -> [String] {
        [
            "-c",
            """
            import os, signal, socket, array
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(\(pythonString(path)))
            s.sendall(bytes.fromhex("5349504301030000"))
            s.recv(8)
            fd = os.open("/dev/null", os.O_RDONLY)
            s.sendmsg([bytes.fromhex("000000020d02" + \(pythonString(tail)))],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd, fd]))])
            os.kill(os.getpid(), signal.SIGKILL)
            """,
        ]
    }

    @Test(
        "a peer killed mid-message, or right after a whole one, leaves no descriptor open in listen",
        .enabled(if: hasPython, "needs python3"),
        arguments: [
            ("mid-message", "0000000901616263"),  // a message of 8 bytes, 3 of them sent
            ("after a whole message", "0000000401686921"),  // message "hi!"
        ]
    )
    func killedMidTransfer(_ what: String, tail: String) async throws {
        try await withListenCommand(["--max-descriptors", "2"]) { path, listener in
            // Each event loop of listen opens a descriptor of its own (its busy poller's) with its first connection:
            // one plain message per core reaches every loop before counting.
            for _ in 0..<ProcessInfo.processInfo.activeProcessorCount {
                #expect(try await runCLI(["send", path, "warm up"]).status == 0)
                #expect(await listener.standardError.waitForLine(containing: "connection closed from") != nil)
            }
            // The relays of the warm-up connections close their sockets just after the close is noted: count once
            // the number has stopped falling.
            let before = try await settledDescriptorCount(of: listener.processID)
            let peer = try SpawnedProcess(executable: Self.python, arguments: Self.killedPeer(path: path, tail: tail))
            let status = try await withProcess(peer) { await $0.waitForExit() }
            #expect(status != 0, "the peer killed itself")
            // The peer's connection closes (whether its message got through depends on whether it died before the
            // server's hello reached it, as for any peer).
            let closed = await listener.standardError.waitForLine(containing: "pid=\(peer.processID) (connection")
            #expect(closed != nil)
            #expect(await listener.standardError.waitForLine(containing: "connection closed from") != nil)
            // The relay's threads close the connection's socket once both have ended, just after the close is noted.
            let deadline = ContinuousClock.now + .seconds(20)
            var after = openDescriptors(of: listener.processID)
            while after > before && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
                after = openDescriptors(of: listener.processID)
            }
            #expect(after == before, "listen's descriptors: \(before) before the peer, \(after) after")
        }
    }
}

extension DescriptorPassingCLITests {
    /// A peer (a Python process) that sends a 300,000-byte message as a shared payload: a memfd made as `mode` says
    /// (`sealed`, `unsealed`, `short`: sealed but holding 1,000 bytes, or `pipe`: a pipe instead of a memfd), passed by a
    /// descriptors frame before the shared-payload frame; then it half-closes and reads until the server closes.
    static func sharedPayloadPeer(path: String, mode: String) -> [String] {
        [
            "-c",
            """
            import os, socket, array, fcntl
            mode = \(pythonString(mode))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(\(pythonString(path)))
            s.sendall(bytes.fromhex("5349504301070000"))
            s.recv(8)
            data = b"a" * 300000
            if mode == "pipe":
                fd = os.pipe()[0]
            else:
                fd = os.memfd_create("payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                os.write(fd, data[:1000] if mode == "short" else data)
                if mode != "unsealed":
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            frames = bytes.fromhex("000000020d01" + "0000000e0e01" + "00000000") + len(data).to_bytes(8, "big")
            s.sendmsg([frames], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.close(fd)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            """,
        ]
    }

    @Test(
        "a shared payload from another implementation: sealed memory is read whole; unsealed, short or not a memfd closes the connection",
        .enabled(if: hasPython, "needs python3"),
        arguments: [
            ("sealed", nil),
            ("unsealed", "is not sealed shared memory"),
            ("short", "holds 1000 bytes, not the 300000 it announced"),
            ("pipe", "is not sealed shared memory"),
        ] as [(String, String?)]
    )
    func sharedPayloadFromPython(_ mode: String, refusal: String?) async throws {
        try await withListenCommand(["--max-descriptors", "1", "--format", "json"]) { path, listener in
            let peer = try SpawnedProcess(executable: Self.python, arguments: Self.sharedPayloadPeer(path: path, mode: mode))
            #expect(try await withProcess(peer) { await $0.waitForExit() } == 0)
            let closed = await listener.standardError.waitForLine(containing: "connection closed from")
            if let refusal {
                #expect(closed?.contains(refusal) == true, "\(closed ?? "no close")")
            } else {
                #expect(closed?.hasSuffix(")") == true, "an orderly close: \(closed ?? "no close")")
                let line = await listener.standardOutput.waitForLine(containing: "\"size\":300000")
                #expect(line?.contains("\"kind\":\"message\"") == true)
            }
        }
    }
}

extension DescriptorPassingCLITests {
    @Test(
        "a descriptors frame before a going-away frame is refused with the frame's kind, not Swift's description of it",
        .enabled(if: hasPython, "needs python3")
    )
    func descriptorsBeforeGoingAway() async throws {
        try await withListenCommand(["--max-descriptors", "1"]) { path, listener in
            let peer = try SpawnedProcess(
                executable: Self.python,
                arguments: [
                    "-c",
                    """
                    import os, socket, array
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(\(pythonString(path)))
                    s.sendall(bytes.fromhex("5349504301070000"))
                    s.recv(8)
                    r, w = os.pipe()
                    # A descriptors frame (one descriptor), then going-away 0x00 "bye" instead of a message.
                    frames = bytes.fromhex("000000020d01" + "000000050500") + b"bye"
                    s.sendmsg([frames], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):
                        pass
                    """,
                ]
            )
            #expect(try await withProcess(peer) { await $0.waitForExit() } == 0)
            let closed = await listener.standardError.waitForLine(containing: "connection closed from")
            #expect(closed?.contains("not before a going-away frame (0x05)") == true, "\(closed ?? "no close")")
            #expect(closed?.contains("GoAwayReason") == false, "\(closed ?? "no close")")
        }
    }
}

/// How many descriptors process `pid` has open once the number has stayed the same for ten looks 20 ms apart
/// (at most 10 s).
private func settledDescriptorCount(of pid: pid_t) async throws -> Int {
    var count = openDescriptors(of: pid)
    var unchanged = 0
    let deadline = ContinuousClock.now + .seconds(10)
    while unchanged < 10 && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
        let next = openDescriptors(of: pid)
        unchanged = next == count ? unchanged + 1 : 0
        count = next
    }
    return count
}

/// How many descriptors process `pid` has open.
private func openDescriptors(of pid: pid_t) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}

/// `text` as a Python string literal.
private func pythonString(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
}

extension DescriptorPassingCLITests {
    /// A peer (a Python process) that sends, as fast as the server takes them, requests each standing for the same
    /// sealed 4 MiB memfd (a descriptors frame and a shared-payload request frame, 21 bytes), and reads nothing; once
    /// the server has stopped taking them for a second it prints `sent N` and holds the connection.
    static func sharedRequestFlooder(path: String) -> [String] {
        [
            "-c",
            """
            import os, socket, array, fcntl, time
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(\(pythonString(path)))
            s.sendall(bytes.fromhex("5349504301070000"))
            s.recv(8)
            size = 4 << 20
            fd = os.memfd_create("payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.write(fd, b"a" * size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            s.settimeout(1.0)
            sent = 0
            try:
                while sent < 2000:
                    frames = bytes.fromhex("000000020d01" + "000000" + "0e" + "0e02") + (sent + 1).to_bytes(4, "big") + size.to_bytes(8, "big")
                    s.sendmsg([frames], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                    sent += 1
            except (socket.timeout, BlockingIOError):
                pass
            print("sent", sent, flush=True)
            time.sleep(60)
            """,
        ]
    }

    @Test(
        "a peer that sends requests standing for a sealed memfd again and again and reads nothing holds a bounded share of the server's memory (before, about 64 answers of the payload's size per connection: 4 GB for four connections of 16 MiB)",
        .enabled(if: hasPython, "needs python3")
    )
    func sharedRequestsUnread() async throws {
        try await withServeCommand(["--max-descriptors", "1"]) { path, server in
            let before = try #require(residentKilobytes(of: server.processID))
            let peer = try SpawnedProcess(executable: Self.python, arguments: Self.sharedRequestFlooder(path: path))
            try await withProcess(peer) { peer in
                let sent = await peer.standardOutput.waitForLine(containing: "sent")
                try #require(sent != nil, "the flooder did not finish")
                // The server may still be answering what it took: the most it holds is what counts.
                var most = before
                for _ in 0..<20 {
                    most = max(most, residentKilobytes(of: server.processID) ?? most)
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(most - before < 64 * 1024, "VmRSS went from \(before) kB to \(most) kB after \(sent ?? "")")
                // And the server serves others meanwhile.
                let answered = try await runCLI(["request", "--timeout", "20", path, "hi"])
                #expect(answered.status == 0, "\(answered)")
                peer.signal(SIGKILL)
            }
        }
    }
}

extension DescriptorPassingCLITests {
    /// A peer (a Python process) that passes a Unix socket whose receive queue holds, in flight, a TCP socket with
    /// `SO_LINGER` of an hour and a send queue its peer never drains, then a message; it prints `sent` and holds the
    /// TCP peer open, so that the last close of the TCP socket, which comes with the Unix socket's, would wait.
    static func nestedLingerPeer(path: String) -> [String] {
        [
            "-c",
            """
            import socket, struct, array, time
            listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
            tcp = socket.socket(); tcp.connect(listener.getsockname()); held, _ = listener.accept()
            held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            tcp.setblocking(False)
            try:
                while True: tcp.send(b"x" * 65536)
            except BlockingIOError:
                pass
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3600))
            a, b = socket.socketpair()
            socket.send_fds(b, [b"z"], [tcp.fileno()]); tcp.close(); b.close()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(\(pythonString(path)))
            s.sendall(bytes.fromhex("5349504301070000"))
            s.recv(8)
            # A descriptors frame passing the Unix socket, then a one-way message "hi".
            s.sendmsg([bytes.fromhex("000000020d01" + "0000000301") + b"hi"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [a.fileno()]))])
            a.close()
            print("sent", flush=True)
            time.sleep(60)
            """,
        ]
    }

    @Test(
        "a passed Unix socket holding a lingering TCP socket in flight is closed off the event loop: every connection is served meanwhile (before, the close waited out the linger on the loop, and the connections on it got no hello)",
        .enabled(if: hasPython, "needs python3")
    )
    func nestedLingeringSocket() async throws {
        try await withServeCommand(["--max-descriptors", "1"]) { path, server in
            let peer = try SpawnedProcess(executable: Self.python, arguments: Self.nestedLingerPeer(path: path))
            try await withProcess(peer) { peer in
                let sent = await peer.standardOutput.waitForLine(containing: "sent")
                try #require(sent != nil, "the peer did not pass its socket")
                // serve describes and closes the descriptor when it prints the message.
                let printed = await server.standardOutput.waitForLine(containing: "with descriptors")
                #expect(printed != nil, "serve did not print the message")
                // Connections land on the event loops in turn (one loop per core): twice as many as there are loops,
                // and two more, reach the blocked one too.
                for _ in 0..<(2 * ProcessInfo.processInfo.activeProcessorCount + 2) {
                    let answered = try await runCLI(["request", "--timeout", "10", path, "hi"])
                    #expect(answered.status == 0, "\(answered)")
                }
                peer.signal(SIGKILL)
            }
        }
    }
}
