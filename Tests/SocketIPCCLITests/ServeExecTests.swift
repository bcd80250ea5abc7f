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

@Suite("socket-ipc serve --exec", .timeLimit(.minutes(1)))
struct ServeExecTests {
    @Test("a request is piped to the command; its standard output is the reply")
    func reply() async throws {
        try await withServeCommand(["--exec", "tr a-z A-Z"]) { path, _ in
            let result = try await runCLI(["request", path, "hello, exec"])
            #expect(result.status == 0, "stderr: \(result.error)")
            #expect(result.output == "reply: \"HELLO, EXEC\"\n")
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

    @Test("one-way messages run the command too, and the server waits for it before it exits")
    func oneWay() async throws {
        try await withTemporarySocketDirectory { directory in
            let output = directory + "/out"
            let path = directory + "/s.sock"
            try await withServeCommand(at: path, ["--exec", "cat >> '\(output)'"]) { server in
                let sent = try await runCLI(["send", path, "one-way"])
                #expect(sent.status == 0, "stderr: \(sent.error)")
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
            }
            #expect((try? String(contentsOfFile: output, encoding: .utf8)) == "one-way")
        }
    }

    #if os(Linux)
        @Test("the command inherits no descriptor but its standard input, output and error")
        func noLeakedDescriptors() async throws {
            try await withServeCommand(["--exec", "ls /proc/self/fd"]) { path, _ in
                let result = try await runCLI(["request", path, "x"])
                #expect(result.status == 0, "stderr: \(result.error)")
                // `ls` itself holds the directory it lists open: 3.
                #expect(result.output == "reply: \"0\n1\n2\n3\n\"\n")
            }
        }
    #endif
}
