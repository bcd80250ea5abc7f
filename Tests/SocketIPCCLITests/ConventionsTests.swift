import Foundation
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

/// Issue 12's conventions: the exit-status table in `--help`, colour only on a terminal and never with `NO_COLOR`,
/// shell completions, the `--socket` spelling of earlier versions, and `bench`'s table and JSON lines.
@Suite("socket-ipc conventions", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConventionsTests {
    @Test("every client command's help documents the exit statuses", arguments: ["send", "request", "call", "watch"])
    func exitStatusesInHelp(command: String) async throws {
        let result = try await runCLI([command, "--help"])
        #expect(result.status == 0)
        for status in ["0 done", "1 the server answered with an error", "3 no connection", "4 refused", "5 timed out"] {
            #expect(result.output.contains(status), "\(command) --help lacks \(status)")
        }
        #expect(result.output.contains("Examples"), "\(command) --help has examples")
    }

    @Test("an error is red on a terminal, and plain with NO_COLOR or when piped")
    func colour() async throws {
        guard toolExists("script") else { return }
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/none.sock"
            let command = "\(socketIPCBinary) request \(path) hi"
            // `script` gives the command a terminal; its output is what the terminal showed.
            // TERM and NO_COLOR set here, whatever the test runner's environment (swift test may set TERM=dumb).
            let onTerminal = try await runShell("env -u NO_COLOR TERM=xterm script -qec '\(command)' /dev/null")
            #expect(onTerminal.status == 3)
            #expect(onTerminal.output.contains(Array("\u{1B}[31merror:\u{1B}[0m".utf8)), "\(String(decoding: onTerminal.output, as: UTF8.self))")

            let noColor = try await runShell("env NO_COLOR=1 TERM=xterm script -qec '\(command)' /dev/null")
            #expect(noColor.status == 3)
            #expect(!noColor.output.contains(0x1B), "\(String(decoding: noColor.output, as: UTF8.self))")
            #expect(String(decoding: noColor.output, as: UTF8.self).contains("error: no server at \(path)"))

            let piped = try await runCLI(["request", path, "hi"])
            #expect(!piped.error.utf8.contains(0x1B))
        }
    }

    @Test("shell completion scripts come from swift-argument-parser and name the subcommands", arguments: ["bash", "zsh", "fish"])
    func completions(shell: String) async throws {
        let result = try await runCLI(["--generate-completion-script", shell])
        #expect(result.status == 0, "stderr: \(result.error)")
        for subcommand in ["serve", "send", "request", "call", "watch", "probe", "bench", "demo"] {
            #expect(result.output.contains(subcommand), "\(shell) completion lacks \(subcommand)")
        }
        if shell == "bash" {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("socket-ipc-\(getpid()).bash")
            try Data(result.output.utf8).write(to: file)
            defer { try? FileManager.default.removeItem(at: file) }
            #expect(try await runShell("bash -n \(file.path)").status == 0, "the bash script parses")
        }
    }

    @Test("--socket PATH, the spelling of earlier versions, is the positional PATH; -- ends it")
    func socketOption() async throws {
        try await withServeCommand { path, _ in
            for arguments in [["request", "--socket", path, "hi"], ["request", "--socket=\(path)", "hi"], ["request", path, "hi"]] {
                let result = try await runCLI(arguments)
                #expect(result.status == 0, "\(arguments): \(result.error)")
                #expect(result.output == "reply: \"hi\"\n")
            }
            let afterDashes = try await runCLI(["request", path, "--", "--socket"])
            #expect(afterDashes.output == "reply: \"--socket\"\n", "stderr: \(afterDashes.error)")
        }
    }

    @Test("bench prints a table row per workload, or with --json one JSON line in shared/bench's format")
    func bench() async throws {
        let table = try await runCLI(["bench", "--workload", "rr", "stream", "--n", "200"])
        #expect(table.status == 0, "stderr: \(table.error)")
        let lines = table.output.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.first?.hasPrefix("workload") == true)
        #expect(lines.dropFirst().first?.hasPrefix("rr ") == true)
        #expect(lines.dropFirst().first?.contains("ops/s") == true)
        #expect(lines.last?.hasPrefix("stream ") == true)

        let json = try await runCLI(["bench", "--workload", "rr", "--n", "200", "--json"])
        #expect(json.status == 0, "stderr: \(json.error)")
        let object = try #require(try parseJSON(json.output))
        #expect(object["workload"] as? String == "rr")
        #expect(object["n"] as? Int == 200)
        #expect((object["ops_per_s"] as? Double ?? 0) > 0)
    }

    @Test("options that cannot be meant are refused with the usage status (64) and their own reason, before anything runs")
    func impossibleOptions() async throws {
        let cases: [([String], String)] = [
            (["bench", "--workload", "bogus"], "unknown or unsupported workload bogus"),
            (["bench", "--busy-poll-us=-1"], "--busy-poll-us must be 0 or more"),
            (["bench", "--busy-poll-us", "5", "--no-busy-poll"], "exclude each other"),
            (["serve", "--allow-gid", "4294967295", "/tmp/never.sock"], "(uid_t)-1"),
            (["serve", "--allow-uid", "4294967295", "/tmp/never.sock"], "(uid_t)-1"),
        ]
        for (arguments, reason) in cases {
            let result = try await runCLI(arguments)
            #expect(result.status == 64, "\(arguments): \(result)")
            #expect(result.error.contains(reason), "\(arguments): \(result.error)")
        }
    }

    @Test("bench stopped by SIGINT shuts its servers down, removes its temporary directory and exits 130 (before, it left the directory and its socket files behind)")
    func benchInterrupted() async throws {
        let bench = try TestProcess.socketIPC(["bench", "--workload", "rr", "--n", "100000000"])
        let header = await bench.standardOutput.waitForLine(containing: "workload")
        try #require(header != nil, "bench did not start")
        bench.signal(SIGINT)
        #expect(await bench.waitForExit() == 130)
        let note = try #require(await bench.standardError.waitForLine(containing: "interrupted by SIGINT"))
        // `... and /tmp/sipc-demo-XXXXXX is removed`
        let directory = try #require(note.split(separator: " ").first { $0.hasPrefix("/tmp/sipc-demo-") })
        #expect(access(String(directory), F_OK) == -1, "\(directory) is left behind")
    }

    @Test("an argument that is not valid UTF-8 is refused (usage, 64), not read altered: no file under another name")
    func nonUTF8Argument() async throws {
        try await withTemporarySocketDirectory { directory in
            // `a\xFFb.sock`: Swift's CommandLine.arguments would read it as `a\u{FFFD}b.sock`, another file.
            let result = try await runShell("'\(socketIPCBinary)' serve \"\(directory)/a$(printf '\\377')b.sock\"")
            #expect(result.status == 64)
            let made = try FileManager.default.contentsOfDirectory(atPath: directory)
            #expect(made.isEmpty, "\(made)")
        }
    }
}

