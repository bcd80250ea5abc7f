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

/// `socket-ipc call` and `watch` against the demo service that `serve` serves: responses, errors and their exit
/// statuses.
@Suite("socket-ipc call and watch", .timeLimit(.minutes(5)), .limitedConcurrency)
struct CallCommandTests {
    @Test("call prints the JSON response on one line")
    func echo() async throws {
        try await withServeCommand { path, _ in
            let request = #"{"b": [1, 2.5, null, true], "a": "x/y"}"#
            let result = try await runCLI(["call", "--socket", path, "demo.echo", request])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == #"{"a":"x/y","b":[1,2.5,null,true]}"# + "\n")
            #expect(result.error == "")
        }
    }

    @Test("a --timeout too short for anything ends with the call's deadline (5), or with no hello within that time (3), or is done in time (0), never with a connection closed under it: before, the connect timeout it bounded closed the connection already handed over")
    func tinyTimeout() async throws {
        try await withServeCommand { path, _ in
            // Which step the deadline cuts varies from run to run: several runs meet more of them.
            for _ in 0..<4 {
                for arguments in [["call", "--timeout=0.0001", path, "demo.echo", "1"], ["request", "--timeout=0.0001", path, "hi"]] {
                    let result = try await runCLI(arguments)
                    let noHello = result.error.contains("sent no hello within 0.0001 seconds")
                    // A round trip may fit in the time left after the hello (it did once in a full run here): done, 0.
                    #expect(result.status == (noHello ? 3 : 5) || result.status == 0, "\(arguments[0]): \(result)")
                    #expect(!result.error.contains("closed"), "\(arguments[0]): \(result.error)")
                }
            }
        }
    }

    @Test("a request is checked by RFC 8259's grammar, as responses are: [1,] is refused (64), 1e400 is sent (before, the other way round)")
    func requestGrammar() async throws {
        try await withServeCommand { path, _ in
            let trailingComma = try await runCLI(["call", path, "demo.echo", "[1,]"])
            #expect(trailingComma.status == 64, "\(trailingComma)")
            #expect(trailingComma.error.contains("is not JSON"), "\(trailingComma.error)")
            let huge = try await runCLI(["call", path, "demo.echo", "1e400"])
            #expect(huge.status != 64 && !huge.error.contains("is not JSON"), "\(huge)")
        }
    }

    @Test("a request nested 64 levels deep is echoed; one nested 500 levels is refused with a clear reason, and the server serves on")
    func deepNesting() async throws {
        try await withServeCommand { path, _ in
            let deepest = String(repeating: "[", count: 63) + "1" + String(repeating: "]", count: 63)
            let echoed = try await runCLI(["call", "--socket", path, "demo.echo", deepest])
            #expect(echoed.status == 0, "stderr: \(echoed.error)")
            #expect(echoed.output == deepest + "\n")
            let tooDeep = String(repeating: "[", count: 500) + "1" + String(repeating: "]", count: 500)
            let refused = try await runCLI(["call", "--socket", path, "demo.echo", tooDeep])
            #expect(refused.status != 0)
            #expect(refused.error.contains("nested deeper than 64 levels"), "stderr: \(refused.error)")
            #expect(refused.error.count < 2000, "a short reason, not the request's dump: \(refused.error.count) bytes")
            let after = try await runCLI(["call", "--socket", path, "demo.echo", "1"])
            #expect(after.status == 0 && after.output == "1\n", "stderr: \(after.error)")
        }
    }

    @Test("call reads the request from standard input (omitted or -) and from @FILE; --pretty indents the response")
    func requestSourcesAndPretty() async throws {
        try await withServeCommand { path, _ in
            let omitted = try await runCLI(["call", "--socket", path, "demo.echo"], input: "[1, {\"k\": \"v\"}]\n")
            #expect(omitted.status == 0, "stderr: \(omitted.error)")
            #expect(omitted.output == #"[1,{"k":"v"}]"# + "\n")

            let dash = try await runCLI(["call", "--socket", path, "demo.increment", "-"], input: "41")
            #expect(dash.status == 0, "stderr: \(dash.error)")
            #expect(dash.output == "41\n")

            let file = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("request.json")
            try Data(#"{"z": 1, "a": [true]}"#.utf8).write(to: file)
            let pretty = try await runCLI(["call", "--socket", path, "--pretty", "demo.echo", "@" + file.path])
            #expect(pretty.status == 0, "stderr: \(pretty.error)")
            #expect(pretty.output == "{\n  \"a\" : [\n    true\n  ],\n  \"z\" : 1\n}\n")

            let fragment = try await runCLI(["call", "--socket", path, "demo.echo", #""just a string""#])
            #expect(fragment.output == #""just a string""# + "\n")
        }
    }

    @Test("demo.echo answers every kind of JSON value as it came, a wide request of 50,000 objects whole, and refuses one over 1 MiB with the reason")
    func echoKindsAndSizes() async throws {
        try await withServeCommand { path, _ in
            let kinds = #"[1,-3,2.5,12345678901234567890,true,false,null,"s\u001b",{"a":[{}]},[]]"#
            let echoed = try await runCLI(["call", "--socket", path, "demo.echo", kinds])
            #expect(echoed.status == 0, "stderr: \(echoed.error)")
            #expect(echoed.output == #"[1,-3,2.5,1.2345678901234567e+19,true,false,null,"s\u001b",{"a":[{}]},[]]"# + "\n")
            let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
            let wide = "[" + Array(repeating: #"{"k":1}"#, count: 50_000).joined(separator: ",") + "]"
            let wideFile = directory.appendingPathComponent("wide.json")
            try Data(wide.utf8).write(to: wideFile)
            let answered = try await runCLI(["call", "--socket", path, "demo.echo", "@" + wideFile.path])
            #expect(answered.status == 0, "stderr: \(answered.error.prefix(500))")
            #expect(answered.output == wide + "\n")
            // Through `Decodable` such a value costs seconds of CPU per MiB and a hundred times its size in memory.
            let tooLarge = "[" + Array(repeating: "{}", count: 350_000).joined(separator: ",") + "]"
            let tooLargeFile = directory.appendingPathComponent("too-large.json")
            try Data(tooLarge.utf8).write(to: tooLargeFile)
            let refused = try await runCLI(["call", "--socket", path, "demo.echo", "@" + tooLargeFile.path])
            #expect(refused.status == 1, "stderr: \(refused.error.prefix(500))")
            #expect(refused.error.contains("is larger than 'demo.echo' takes (1048576 bytes)"), "\(refused.error.prefix(500))")
            #expect(refused.error.count < 2000, "a short reason: \(refused.error.count) bytes")
        }
    }

    @Test("an application error exits 1 with `error CODE: MESSAGE` and its details as JSON on standard error")
    func applicationError() async throws {
        try await withServeCommand { path, _ in
            let result = try await runCLI(["call", "--socket", path, "demo.sleep", "--", "-1"])
            #expect(result.status == 1)
            #expect(result.output == "")
            #expect(
                result.error == "error invalidArgument: cannot sleep a negative time; got -1.0 s\n{\"seconds\":-1}\n")

            let watched = try await runCLI(["watch", "--socket", path, "demo.count", "--", "-3"])
            #expect(watched.status == 1)
            #expect(watched.output == "")
            #expect(
                watched.error == "error invalidArgument: cannot count to a negative number; got -3\n{\"count\":-3}\n")
        }
    }

    /// A method whose error's details hold quotes, a backslash, a newline and an ESC.
    enum Refuse: ServiceMethod {
        static let name = "test.refuse"
        typealias Request = String
        typealias Response = String
    }

    @Test("an application error's JSON details print as the same JSON value, on one line, ESC escaped as JSON (found by a review: escaped as text, they were no longer JSON)")
    func detailsStayJSON() async throws {
        var router = ServiceRouter()
        router.register(Refuse.self) { text, _ in
            throw ServiceError(code: "refused", message: "no", details: ["msg": text, "path": #"C:\x"#])
        }
        try await withServiceTestServer(router: router) { _, path in
            let text = "say \"hi\"\nand \u{1B}[31m red"
            let request = String(decoding: try JSONEncoder().encode(text), as: UTF8.self)
            let result = try await runCLI(["call", "--socket", path, "test.refuse", request])
            #expect(result.status == 1)
            let lines = result.error.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.count == 3 && lines[2].isEmpty, "stderr: \(result.error)")
            #expect(lines.first == "error refused: no", "stderr: \(result.error)")
            #expect(!result.error.contains("\u{1B}"), "stderr: \(result.error)")
            let details = try JSONDecoder().decode([String: String].self, from: Data(lines[1].utf8))
            #expect(details == ["msg": text, "path": #"C:\x"#])
        }
    }

    @Test("an application error's long details print cut at 4,096 characters, saying how long they were (found by a review: 16 MiB were printed whole)")
    func longDetailsCut() async throws {
        var router = ServiceRouter()
        router.register(Refuse.self) { text, _ in
            throw ServiceError(code: "refused", message: "no", details: [String](repeating: text, count: 10_000))
        }
        try await withServiceTestServer(router: router) { _, path in
            let result = try await runCLI(["call", "--socket", path, "test.refuse", #""0123456789""#])
            #expect(result.status == 1)
            let lines = result.error.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.count == 3 && lines.first == "error refused: no", "stderr: \(result.error.prefix(300))")
            let whole = "[" + [String](repeating: #""0123456789""#, count: 10_000).joined(separator: ",") + "]"
            #expect(
                lines[1] == whole.prefix(4096) + "… (cut: \(whole.utf8.count) bytes of details in all)",
                "\(lines[1].suffix(200))")
        }
    }

    @Test("a request the method cannot read exits 1, as the server's answer")
    func requestOfTheWrongType() async throws {
        try await withServeCommand { path, _ in
            let result = try await runCLI(["call", "--socket", path, "demo.increment", #""one""#])
            #expect(result.status == 1)
            #expect(result.error.hasPrefix("error: "), "stderr: \(result.error)")
            #expect(result.error.contains("demo.increment"), "stderr: \(result.error)")
            // In words: what was expected and where, not Swift's `DecodingError.typeMismatch` and its debug text.
            #expect(result.error.contains("expected Int at the top level"), "stderr: \(result.error)")
            #expect(!result.error.contains("DecodingError"), "stderr: \(result.error)")
        }
    }

    @Test("a method the server does not serve exits 6")
    func unknownMethod() async throws {
        try await withServeCommand { path, _ in
            for command in ["call", "watch"] {
                let result = try await runCLI([command, "--socket", path, "demo.nothing", "{}"])
                #expect(result.status == 6, "\(command)")
                #expect(result.error.hasPrefix("error: the peer serves no method 'demo.nothing'"), "\(result.error)")
                #expect(result.error.split(separator: "\n").count == 1, "\(result.error)")
            }
        }
    }

    @Test("no server (no socket file, or a stale one) exits 3")
    func noServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let missing = directory + "/missing.sock"
            let stale = directory + "/stale.sock"
            try leaveStaleSocket(at: stale)
            for path in [missing, stale] {
                for command in ["call", "watch"] {
                    let result = try await runCLI([command, "--socket", path, "demo.echo", "1"])
                    #expect(result.status == 3, "\(command) \(path)")
                    #expect(result.error.hasPrefix("error: no server "), "\(command): \(result.error)")
                    #expect(result.error.contains(path), "\(command): \(result.error)")
                    #expect(result.output == "")
                }
            }
        }
    }

    @Test(
        "a client the server's policy refuses exits 4",
        .enabled(if: canRunAsAnotherUser, "needs root and setpriv to run the client as another user")
    )
    func refused() async throws {
        try await withServeCommand(["--permissions", "0666"], directoryMode: 0o755) { path, _ in
            let process = try TestProcess(
                executable: "/usr/bin/setpriv",
                asOtherUser() + [socketIPCBinary, "call", "--socket", path, "demo.echo", "1"]
            )
            let status = await process.waitForExit()
            let error = await process.standardError.text()
            #expect(status == 4, "stderr: \(error)")
            #expect(error.contains("authorization policy refused"), "stderr: \(error)")
            #expect(await process.standardOutput.text() == "")
        }
    }

    @Test("--timeout is the call's deadline: a call that does not complete in time exits 5")
    func deadline() async throws {
        try await withServeCommand { path, _ in
            let result = try await runCLI(["call", "--socket", path, "--timeout", "0.2", "demo.sleep", "3600"])
            #expect(result.status == 5)
            // The caller's timer or the server's, whichever is first.
            #expect(
                result.error.hasPrefix("error: the call 'demo.sleep' did not complete before its deadline"),
                "\(result.error)"
            )
            #expect(result.output == "")
            // The server is still there and answers.
            let next = try await runCLI(["call", "--socket", path, "--timeout", "10", "demo.sleep", "0"])
            #expect(next.status == 0, "stderr: \(next.error)")
            #expect(next.output == "0\n")
        }
    }

    @Test(
        "a request that is not JSON is a usage error (64), and nothing is sent",
        arguments: [
            (["{oops"], nil, "the request in the argument is not JSON: \"{oops\""),
            ([], "", "the request in standard input is not JSON: nothing"),
            (["-"], "[1,", "the request in standard input is not JSON: \"[1,\""),
        ] as [([String], String?, String)]
    )
    func notJSON(arguments: [String], input: String?, message: String) async throws {
        try await withTemporarySocketDirectory { directory in
            // No server: a usage error is found before connecting.
            let path = directory + "/none.sock"
            for command in ["call", "watch"] {
                let result = try await runCLI([command, "--socket", path, "demo.echo"] + arguments, input: input)
                #expect(result.status == 64, "\(command)")
                #expect(result.error == "error: \(message)\n", "\(command)")
            }
        }
    }

    @Test("a request file that cannot be read is a usage error (64)")
    func unreadableFile() async throws {
        try await withTemporarySocketDirectory { directory in
            let file = directory + "/nope.json"
            let result = try await runCLI(["call", "--socket", directory + "/none.sock", "demo.echo", "@" + file])
            #expect(result.status == 64)
            #expect(result.error == "error: cannot read \(file): No such file or directory\n", "\(result.error)")
            // A directory is named too (before: 'could not read the input: Is a directory').
            let folder = try await runCLI(["call", "--socket", directory + "/none.sock", "demo.echo", "@" + directory])
            #expect(folder.status == 64)
            #expect(folder.error == "error: cannot read \(directory): it is a directory\n", "\(folder.error)")
        }
    }

    @Test("watch prints each response as a JSON line, and exits 0 when the stream ends")
    func watchUntilTheEnd() async throws {
        try await withServeCommand { path, _ in
            let result = try await runCLI(["watch", "--socket", path, "demo.count", "5"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "0\n1\n2\n3\n4\n")
            let none = try await runCLI(["watch", "--socket", path, "demo.count", "0"])
            #expect(none.status == 0, "stderr: \(none.error)")
            #expect(none.output == "")
        }
    }

    @Test("watch prints each change as it comes, and SIGINT ends it with exit 0, cancelling the call on the server")
    func watchUntilInterrupted() async throws {
        try await withServeCommand { path, _ in
            let watch = try TestProcess.socketIPC(["watch", "--socket", path, "demo.counter", "{}"])
            try await withProcess(watch) { watch in
                #expect(await watch.standardOutput.waitForLine(containing: "0") == "0")
                let increment = try await runCLI(["call", "--socket", path, "demo.increment", "5"])
                #expect(increment.output == "5\n")
                #expect(await watch.standardOutput.waitForLine(containing: "5") == "5")
                watch.signal(SIGINT)
                #expect(await watch.waitForExit() == 0)
                #expect(await watch.standardOutput.remainingLines() == ["0", "5"])
                #expect(await watch.standardError.text() == "")
            }
            // The server answers on.
            let again = try await runCLI(["call", "--socket", path, "demo.increment", "1"])
            #expect(again.output == "6\n")
        }
    }

    @Test("watch against a server frozen with SIGSTOP ends by itself with exit 3: its keepalive ping (every 10 s) gets no pong within 10 s")
    func watchOfAFrozenServer() async throws {
        try await withServeCommand { path, server in
            let watch = try TestProcess.socketIPC(["watch", "--socket", path, "demo.counter", "{}"])
            try await withProcess(watch) { watch in
                #expect(await watch.standardOutput.waitForLine(containing: "0") == "0")
                try await freeze(server)
                // The CLI's own keepalive deadline (at most 20 s) is what ends this wait; the suite's limit is the net.
                #expect(await watch.waitForExit() == 3)
                // The error, once, without a log line repeating it.
                let error = await watch.standardError.text()
                #expect(
                    error == "error: the peer did not answer a keepalive ping within 10.0 seconds: it is frozen or unreachable\n",
                    "\(error)"
                )
                #expect(await watch.standardOutput.remainingLines() == ["0"])
            }
            server.signal(SIGKILL)
            server.signal(SIGCONT)
            #expect(await server.waitForExit() == 128 + SIGKILL)
        }
    }

    @Test("the help lists call and watch; theirs has examples and the exit statuses")
    func help() async throws {
        let root = try await runCLI(["--help"])
        for subcommand in ["call", "watch"] {
            #expect(root.output.contains("\n  \(subcommand) "), "\(subcommand) missing from the help")
            let help = try await runCLI([subcommand, "--help"])
            #expect(help.status == 0)
            #expect(help.output.contains("socket-ipc \(subcommand) app.sock demo."), "\(help.output)")
            #expect(help.output.contains("Exit status: 0"), "\(help.output)")
            #expect(help.output.contains("6 no such method"), "\(help.output)")
        }
    }
}
