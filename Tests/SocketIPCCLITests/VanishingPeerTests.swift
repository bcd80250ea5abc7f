import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 9, section 1: nothing dies of SIGPIPE. Peers that vanish before the server writes its acknowledgement, and
/// servers that close before the client writes its message, cost that one connection a typed error; the process
/// keeps running.
@Suite("Vanishing peers never kill a process with SIGPIPE", .timeLimit(.minutes(5)), .limitedConcurrency)
struct VanishingPeerTests {
    @Test("serve --mode eof, stopped with SIGSTOP while 3 × 200 clients connect, write and vanish, keeps serving")
    func stoppedServerOutlivesVanishingClients() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            for round in 0..<3 {
                // Fewer than the listen backlog (256): every connect completes while the server is stopped.
                server.signal(SIGSTOP)
                for _ in 0..<200 { try connectWriteAndVanish(path, message: "hi") }
                server.signal(SIGCONT)
                // Connections are accepted in order: once this one is answered, the server has written (or
                // tried to write) the acknowledgements of all the vanished ones.
                let result = try await runCLI(["send", "--socket", path, "--eof", "hello"])
                #expect(result.status == 0, "round \(round): stderr: \(result.error)")
                #expect(result.output == "ack: 5\n")
                #expect(server.isRunning, "round \(round): the server died")
            }
            server.signal(SIGTERM)
            let status = await server.waitForExit()
            #expect(status == 0, "the server exits 0 on SIGTERM, not \(status) (141, 128 + 13, would be SIGPIPE)")
        }
    }

    @Test("a fresh serve --mode eof keeps running while 300 clients vanish concurrently")
    func freshServerOutlivesVanishingClients() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask { for _ in 0..<40 { try connectWriteAndVanish(path, message: "hi") } }
                }
                try await group.waitForAll()
            }
            let result = try await runCLI(["send", "--socket", path, "--eof", "hello"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(server.isRunning, "the server died")
            server.signal(SIGTERM)
            #expect(await server.waitForExit() == 0)
        }
    }

    @Test("send --eof against a listener that accepts and closes at once: 300 runs, always a typed error, never SIGPIPE")
    func sendToClosingListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/closer.sock"
            let listener = try ClosingListener(path: path)
            defer { listener.stop() }
            // The runs are started by `xargs` (6 at once) rather than by this test process, so that
            // hundreds of child exits do not signal the test runner, whose other tests start processes too.
            let script = """
                seq 300 | xargs -P 6 -I {} sh -c 'out=$("$0" send --eof --socket "$1" hello 2>&1); echo "status=$? $out"' "$0" "$1"
                """
            let runs = try TestProcess.shell(script, [path])
            let lines = await runs.standardOutput.remainingLines()
            #expect(await runs.waitForExit() == 0)
            #expect(lines.count == 300)
            var statuses: [String: Int] = [:]
            for line in lines {
                statuses[String(line.prefix(while: { $0 != " " })), default: 0] += 1
                // Exit status 3 (no connection: the message was not delivered) and one `error:` line: never 141
                // (128 + SIGPIPE) from the shell.
                #expect(line.hasPrefix("status=3 error: "), "\(line)")
            }
            #expect(statuses["status=141"] == nil, "exit statuses: \(statuses)")
        }
    }

    @Test("send --eof to a framed server exits 3 and says it is a framed server: drop --eof")
    func sendEOFToFramedServer() async throws {
        try await withServeCommand { path, _ in
            for arguments in [["hello"], []] {
                let result = try await runCLI(["send", "--socket", path, "--eof"] + arguments, input: "hello")
                #expect(result.status == 3)
                #expect(result.output.isEmpty, "no acknowledgement is printed: \(result.output)")
                #expect(result.error.contains("this is a framed server"), "stderr: \(result.error)")
                #expect(result.error.contains("drop --eof"), "stderr: \(result.error)")
            }
        }
    }
}

/// Connects to `path`, writes `message` and closes at once, without reading, from the calling thread.
func connectWriteAndVanish(_ path: String, message: String) throws {
    let descriptor = makeUnixStreamSocket()
    defer { close(descriptor) }
    guard connectUnixSocket(descriptor, to: path) == 0 else {
        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    sendWithoutSignal(descriptor, Array(message.utf8))
}
