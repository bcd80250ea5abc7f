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

/// A command whose standard output nobody reads (a paused `| less`) blocks in `write(2)`; SIGINT and SIGTERM must end
/// it all the same, as they end any process blocked so.
@Suite("Commands whose standard output nobody reads", .timeLimit(.minutes(2)))
struct BlockedOutputTests {
    /// Makes a FIFO at `path` and opens it to read, so that a command's open of it to write goes through; returns the
    /// read end, which the test never reads (non-blocking, for `FIONREAD` and for a first line).
    static func makeFIFO(at path: String) throws -> Int32 {
        try #require(mkfifo(path, 0o600) == 0)
        let reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        try #require(reader >= 0)
        return reader
    }

    /// Whether a file appears at `path` within 30 s, looked for every 10 ms: a server started in a shell with its
    /// output redirected says nothing the test could wait for.
    static func socketAppears(at path: String) async -> Bool {
        for _ in 0..<3000 {
            var status = stat()
            if stat(path, &status) == 0 { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// `serve --socket PATH` with `options`, started by a shell with the `redirections` given (such as `> FIFO`),
    /// so that the test process is the server itself.
    static func startServe(at path: String, _ options: String = "", redirecting redirections: String) throws -> TestProcess {
        try TestProcess(
            executable: "/bin/sh",
            ["-c", #"exec "$0" serve --socket "$1" "# + options + " " + redirections, socketIPCBinary, path],
            timeLimit: .seconds(90)
        )
    }

    /// Requests enough times that each event loop of the server at `path` is reached (connections are spread over
    /// them in turn), expecting each to be answered.
    static func expectEveryLoopAnswers(at path: String) async throws {
        for _ in 0..<(2 * ProcessInfo.processInfo.activeProcessorCount + 2) {
            let answered = try await runCLI(["request", "--socket", path, "--timeout", "10", "hi"])
            #expect(answered.status == 0 && answered.output == "reply: \"hi\"\n", "\(answered)")
        }
    }

    @Test("watch whose standard output nobody reads ends on SIGTERM, with exit 0")
    func watchEndsOnSIGTERM() async throws {
        try await withServeCommand { path, _ in
            let fifo = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("out").path
            let reader = try Self.makeFIFO(at: fifo)
            defer { close(reader) }
            let watch = try TestProcess(
                executable: "/bin/sh",
                ["-c", #"exec "$0" watch --socket "$1" demo.count 100000000 > "$2""#, socketIPCBinary, path, fifo],
                // Before, it ran until killed: this turns that into a failure (status 137).
                timeLimit: .seconds(30)
            )
            // The pipe's 64 KiB fill up, and the command's next write waits.
            var waiting: Int32 = 0
            for _ in 0..<3000 where waiting < 65_536 - 100 {
                _ = ioctl(reader, UInt(FIONREAD), &waiting)
                try await Task.sleep(for: .milliseconds(10))
            }
            try #require(waiting >= 65_536 - 100, "the pipe holds \(waiting) bytes")
            watch.signal(SIGTERM)
            #expect(await watch.waitForExit() == 0)
        }
    }

    @Test("watch --timeout whose standard output nobody reads ends at its deadline, with exit 5 (found by a review: it waited for the reader)")
    func watchTimeoutWhileBlocked() async throws {
        try await withServeCommand { path, _ in
            let fifo = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("out").path
            let reader = try Self.makeFIFO(at: fifo)
            defer { close(reader) }
            let watch = try TestProcess(
                executable: "/bin/sh",
                [
                    "-c", #"exec "$0" watch --timeout 8 --socket "$1" demo.count 100000000 > "$2""#,
                    socketIPCBinary, path, fifo,
                ],
                // Before, it ran until the pipe was read: this turns that into a failure (status 137).
                timeLimit: .seconds(60)
            )
            // Eight seconds: a loaded machine's debug build fills the pipe well within them (three were once too few).
            #expect(await watch.waitForExit() == 5)
            var waiting: Int32 = 0
            _ = ioctl(reader, UInt(FIONREAD), &waiting)
            #expect(waiting > 32_768, "the pipe filled up first: \(waiting) bytes")
        }
    }

    @Test("request, call and send --timeout whose standard output nobody reads end at their deadline, with exit 5 (found by a review: request and call waited for the reader)")
    func oneShotTimeoutWhileBlocked() async throws {
        try await withServeCommand { path, _ in
            let fifo = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("out").path
            let reader = try Self.makeFIFO(at: fifo)
            defer { close(reader) }
            // The pipe is full before the command starts, as after a reader that stopped reading.
            let writer = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
            try #require(writer >= 0)
            defer { close(writer) }
            let block = [UInt8](repeating: 0x2E, count: Int(PIPE_BUF))
            while write(writer, block, block.count) > 0 {}
            for command in [
                #"exec "$0" request --timeout 2 --socket "$1" hi > "$2""#,
                #"exec "$0" request --timeout 2 --raw --socket "$1" hi > "$2""#,
                #"exec "$0" call --timeout 2 --socket "$1" demo.echo '"hi"' > "$2""#,
                #"exec "$0" send --timeout 2 --socket "$1" hi > "$2""#,
            ] {
                // Before, request and call ran until the pipe was read: this turns that into a failure (137).
                let process = try TestProcess(
                    executable: "/bin/sh", ["-c", command, socketIPCBinary, path, fifo], timeLimit: .seconds(60))
                #expect(await process.waitForExit() == 5, "\(command)")
                let error = await process.standardError.text()
                #expect(error.contains("standard output took nothing for a second after the deadline"), "\(command): \(error)")
            }
        }
    }

    @Test("serve whose standard output nobody reads goes on serving every client, and ends on SIGTERM with exit 0")
    func serveGoesOn() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let fifo = directory + "/out"
            let reader = try Self.makeFIFO(at: fifo)
            defer { close(reader) }
            let serve = try Self.startServe(at: path, redirecting: #"> "\#(fifo)""#)
            defer { serve.signal(SIGKILL) }
            // Its first line, then nothing more is read.
            var first: [UInt8] = []
            var byte: UInt8 = 0
            for _ in 0..<3000 where first.last != UInt8(ascii: "\n") {
                if read(reader, &byte, 1) == 1 { first.append(byte) } else { try await Task.sleep(for: .milliseconds(10)) }
            }
            try #require(String(decoding: first, as: UTF8.self) == "listening on \(path)\n")
            // One message of 3,000 lines, each printed: about 180 KB, more than the pipe holds.
            let messages = (1...3000).map { "message number \($0) with some text to fill the pipe" }.joined(separator: "\n")
            let sent = try await runCLI(["send", "--socket", path, "-"], input: messages)
            #expect(sent.status == 0, "stderr: \(sent.error)")
            // Connections are spread over the event loops in turn: each loop is reached. Before, the requests that
            // reached the loop blocked in its write to standard output timed out.
            try await Self.expectEveryLoopAnswers(at: path)
            serve.signal(SIGTERM)
            #expect(await serve.waitForExit() == 0)
        }
    }

    @Test("serve whose standard error nobody reads, logging every connection, goes on serving every client, and ends on SIGTERM with exit 0")
    func serveGoesOnWithBlockedLog() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let fifo = directory + "/err"
            let reader = try Self.makeFIFO(at: fifo)
            defer { close(reader) }
            let serve = try Self.startServe(at: path, "--log-level debug", redirecting: #"2> "\#(fifo)" > /dev/null"#)
            defer { serve.signal(SIGKILL) }
            let ready = await Self.socketAppears(at: path)
            try #require(ready, "serve did not start")
            // Connections that say hello and go: two log lines each ("connection opened", "connection closed"), until
            // the pipe's 64 KiB are full (its last page's slot taken) and then 200 more, whose lines must wait.
            var waiting: Int32 = 0
            var more = 200
            for _ in 0..<5000 where more > 0 {
                let peer = try RawUnixSocket(connectingTo: path)
                peer.write(framedHello)
                _ = await peer.read(count: serverFramedHello.count)
                _ = ioctl(reader, UInt(FIONREAD), &waiting)
                if waiting >= 65_536 - 4096 { more -= 1 }
            }
            try #require(more == 0, "the pipe holds \(waiting) bytes")
            // Each event loop is reached. Before, the loop blocked in its write of a log line to standard error, and
            // the requests that reached it timed out.
            try await Self.expectEveryLoopAnswers(at: path)
            serve.signal(SIGTERM)
            #expect(await serve.waitForExit() == 0)
        }
    }

    @Test("serve --log-level debug prints a peer's long going-away text cut to one line of a few KiB, escaped")
    func longLogLinesCut() async throws {
        try await withServeCommand(["--log-level", "debug"]) { path, server in
            let peer = try RawUnixSocket(connectingTo: path)
            peer.write(framedHello)
            _ = await peer.read(count: serverFramedHello.count)
            // Going-away 0x00 with 1 MiB of newlines and ESCs: before, all of it was escaped on the event loop and
            // printed, a line of 2.6 MB.
            let text = [UInt8]((0..<(1 << 20)).map { $0 % 2 == 0 ? 0x0A : 0x1B })
            let length = UInt32(1 + 1 + text.count)
            peer.write(withUnsafeBytes(of: length.bigEndian, Array.init) + [0x05, 0x00] + text)
            let line = await server.standardError.waitForLine(containing: "peer is going away")
            let printed = try #require(line)
            #expect(printed.utf8.count < 16 * 1024, "\(printed.utf8.count) bytes")
            #expect(printed.contains("…") && !printed.utf8.contains(0x1B), "\(printed.prefix(200))")
        }
    }

    @Test("watch whose reader has gone (| head -n 2) ends, as yes | head does")
    func watchEndsWithItsReader() async throws {
        try await withServeCommand { path, _ in
            let pipeline = try TestProcess(
                executable: "/bin/sh",
                ["-c", #""$0" watch --socket "$1" demo.count 100000000 | head -n 2"#, socketIPCBinary, path],
                // Before, watch went on for ever, its writes failing with EPIPE: this turns that into a failure.
                timeLimit: .seconds(60)
            )
            #expect(await pipeline.waitForExit() == 0)
            #expect(await pipeline.standardOutput.text() == "0\n1\n")
        }
    }

    @Test("watch of a quiet stream ends when its reader does (| head -n 1), not at the stream's next event, as tail -f does")
    func quietWatchEndsWithItsReader() async throws {
        try await withServeCommand { path, server in
            let pipeline = try TestProcess(
                executable: "/bin/sh",
                // demo.counter says its value at once, then only when demo.increment changes it: never, here.
                ["-c", #""$0" watch --socket "$1" demo.counter '{}' | head -n 1"#, socketIPCBinary, path],
                // Before, watch waited for the next event, which never came: this turns that into a failure.
                timeLimit: .seconds(60)
            )
            #expect(await pipeline.waitForExit() == 0)
            #expect(await pipeline.standardOutput.text() == "0\n")
            // Not ended by the server's end: before, watch waited until the server was killed at its time limit.
            #expect(server.isRunning, "the watch ended only when its server did")
        }
    }

    @Test("listen whose reader has gone ends as one killed by SIGPIPE, at once and with its socket file removed; serve whose reader has gone goes on serving")
    func listenEndsServeGoesOn() async throws {
        for command in ["listen", "serve"] {
            try await withTemporarySocketDirectory { directory in
                let path = directory + "/s.sock"
                let fifo = directory + "/out"
                var reader = try Self.makeFIFO(at: fifo)
                defer { if reader >= 0 { close(reader) } }
                let server = try TestProcess(
                    executable: "/bin/sh",
                    ["-c", #"exec "$0" "$1" --socket "$2" > "$3""#, socketIPCBinary, command, path, fifo],
                    timeLimit: .seconds(60)
                )
                defer { server.signal(SIGKILL) }
                let ready = await Self.socketAppears(at: path)
                try #require(ready, "\(command) did not start")
                // The reader goes: every later write to standard output fails with EPIPE.
                close(reader)
                reader = -1
                if command == "listen" {
                    // Without a message to print; before, listen went on until its next one, and then ended without
                    // removing its socket file and lock file.
                    #expect(await server.waitForExit() == 128 + SIGPIPE)
                    #expect(access(path, F_OK) == -1, "the socket file is left behind")
                    #expect(access(path + ".lock", F_OK) == -1, "the lock file is left behind")
                } else {
                    #expect(try await runCLI(["send", "--socket", path, "a message"]).status == 0)
                    let answered = try await runCLI(["request", "--socket", path, "--timeout", "10", "hi"])
                    #expect(answered.status == 0 && answered.output == "reply: \"hi\"\n", "\(answered)")
                    server.signal(SIGTERM)
                    #expect(await server.waitForExit() == 0)
                }
            }
        }
    }

    @Test("listen --count whose reader reads only after a pause gets every line: a server that is done waits for its reader")
    func listenWaitsForASlowReader() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            // Before, the lines still queued 2 s after the last message were dropped at exit.
            let listen = try TestProcess(
                executable: "/bin/sh",
                ["-c", #""$0" listen --count 1 "$1" 2>/dev/null | (sleep 3; wc -l)"#, socketIPCBinary, path],
                timeLimit: .seconds(60)
            )
            let ready = await Self.socketAppears(at: path)
            try #require(ready, "listen did not start")
            // One message of 20,000 lines (about 290 KB printed): more than the pipe holds.
            let lines = (1...20_000).map { "line number \($0)" }.joined(separator: "\n")
            let sent = try await runCLI(["send", "--socket", path, "-"], input: lines)
            #expect(sent.status == 0, "stderr: \(sent.error)")
            #expect(await listen.waitForExit() == 0)
            let counted = await listen.standardOutput.text().trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(counted == "20001", "1 metadata line and 20,000 payload lines")
        }
    }
}
