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

/// Standard output that fails (a full disk) or is non-blocking (left so by a parent): output is never lost with a
/// status of 0 (found by a hostile review: `call … > /dev/full` exited 0, and a non-blocking pipe read slowly got
/// 65,536 of 1,000,003 bytes).
@Suite("Commands whose standard output fails", .timeLimit(.minutes(2)))
struct OutputErrorTests {
    static var hasDevFull: Bool { FileManager.default.fileExists(atPath: "/dev/full") }

    @Test("call and watch whose standard output is a full disk (/dev/full) end with status 74 and say why", .enabled(if: hasDevFull, "needs /dev/full"))
    func fullDisk() async throws {
        try await withServeCommand { path, _ in
            for command in [#""$0" call --socket "$1" demo.echo '"hello"' > /dev/full"#,
                            #""$0" watch --socket "$1" demo.count 100000000 > /dev/full"#] {
                let process = try TestProcess.shell(command, [path])
                #expect(await process.waitForExit() == 74, "\(command)")
                let error = await process.standardError.text()
                #expect(error.contains("writing standard output failed: No space left on device"), "\(command): \(error)")
            }
        }
    }

    @Test("serve whose standard output is a full disk says so once on standard error and goes on serving", .enabled(if: hasDevFull, "needs /dev/full"))
    func serveGoesOn() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let server = try TestProcess.shell(#"exec "$0" serve --socket "$1" > /dev/full"#, [path])
            defer { server.signal(SIGKILL) }
            let noted = await server.standardError.waitForLine(containing: "writing standard output failed")
            #expect(noted?.contains("No space left on device") == true, "\(noted ?? "nothing")")
            let answered = try await runCLI(["request", "--socket", path, "--timeout", "10", "hi"])
            #expect(answered.status == 0 && answered.output == "reply: \"hi\"\n", "\(answered)")
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
        }
    }

    @Test("listen whose standard output is a full disk stops its server, removing its socket and lock files, and ends with status 74 (found by a review: both were left behind)", .enabled(if: hasDevFull, "needs /dev/full"))
    func listenCleansUp() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            let listener = try TestProcess.shell(#"exec "$0" listen --socket "$1" > /dev/full"#, [path])
            defer { listener.signal(SIGKILL) }
            // Its notes go to standard error: the line says it serves.
            #expect(await listener.standardError.waitForLine(containing: "listening on") != nil)
            let sent = try await runCLI(["send", "--socket", path, "--timeout", "10", "one"])
            #expect(sent.status == 0, "\(sent)")
            #expect(await listener.waitForExit() == 74)
            let error = await listener.standardError.text()
            #expect(error.contains("writing standard output failed: No space left on device"), "\(error)")
            #expect(!FileManager.default.fileExists(atPath: path), "the socket file is left behind")
            #expect(!FileManager.default.fileExists(atPath: path + ".lock"), "the lock file is left behind")
        }
    }

    @Test("call whose standard output is a non-blocking pipe, read late, prints all of a 1 MB response", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3"))
    func nonBlockingPipe() async throws {
        try await withServeCommand { path, _ in
            let request = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("big.json")
            try Data(("\"" + String(repeating: "a", count: 1_000_000) + "\"").utf8).write(to: request)
            // The pipe's write end is made non-blocking, as a parent may leave it, and read only after a pause: the
            // command's writes meet EAGAIN.
            let script = """
                import fcntl, os, subprocess, sys, time
                r, w = os.pipe()
                fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
                p = subprocess.Popen(sys.argv[1:], stdout=w)
                os.close(w)
                time.sleep(0.5)
                data = b""
                while True:
                    chunk = os.read(r, 65536)
                    if not chunk: break
                    data += chunk
                print(p.wait(), len(data))
                """
            let process = try TestProcess(
                executable: "/usr/bin/python3",
                ["-c", script, socketIPCBinary, "call", "--socket", path, "demo.echo", "@" + request.path],
                timeLimit: .seconds(60)
            )
            #expect(await process.waitForExit() == 0)
            // The response's JSON and a newline.
            #expect(await process.standardOutput.text() == "0 1000003\n")
        }
    }
}
