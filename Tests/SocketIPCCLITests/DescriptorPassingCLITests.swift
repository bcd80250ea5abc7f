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
@Suite("socket-ipc: passing descriptors", .timeLimit(.minutes(1)))
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
            let before = openDescriptors(of: listener.processID)
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

/// How many descriptors process `pid` has open.
private func openDescriptors(of pid: pid_t) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}

/// `text` as a Python string literal.
private func pythonString(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
}
