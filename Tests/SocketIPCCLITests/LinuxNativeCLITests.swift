import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 13 from the command line: `serve` started by socket activation (`systemd-socket-activate`, as systemd's own
/// tool runs a service), and `@name` addresses in the abstract namespace.
@Suite("socket-ipc: socket activation and abstract addresses", .timeLimit(.minutes(5)), .limitedConcurrency)
struct LinuxNativeCLITests {
    static let activate = "/usr/bin/systemd-socket-activate"
    static let canActivate = FileManager.default.isExecutableFile(atPath: activate)

    /// Runs `systemd-socket-activate -l path socket-ipc serve options...` until `body` is done; the server starts only
    /// when the first client connects.
    func withActivatedServe<Result>(
        at path: String,
        _ options: [String] = [],
        _ body: (SpawnedProcess) async throws -> Result
    ) async throws -> Result {
        // Not Foundation's Process, which misses other children's exits when this one closes its descriptors: see
        // SpawnedProcess.
        let manager = try SpawnedProcess(
            executable: Self.activate,
            arguments: ["-l", path, socketIPCBinary, "serve"] + options
        )
        return try await withProcess(manager) { manager in
            // systemd-socket-activate says so on standard error once it listens, before anything is started.
            let listening = await manager.standardError.waitForLine(containing: "Listening on")
            try #require(listening?.contains(path) == true, "systemd-socket-activate did not listen: \(listening ?? "nothing")")
            return try await body(manager)
        }
    }

    @Test("the first client's connect starts serve, which answers it; the socket file is left as the manager made it",
        .enabled(if: canActivate, "needs systemd-socket-activate (Debian's systemd package)"))
    func activated() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            try await self.withActivatedServe(at: path) { manager in
                let before = fileStatus(path)
                // A generous --timeout: on a loaded machine the exec'd server takes a while to send its hello.
                let result = try await runCLI(["request", "--timeout", "60", path, "hello"])
                #expect(result.status == 0, "stderr: \(result.error)")
                #expect(result.output == "reply: \"hello\"\n")
                // serve (exec'd by the manager) says where it listens: the inherited socket's address.
                #expect(await manager.standardOutput.waitForLine(containing: "listening on") == "listening on \(path)")
                #expect(fileStatus(path) == before, "not replaced, not chmod'ed")
                #expect(!FileManager.default.fileExists(atPath: path + ".lock"), "no lock file: the socket is not ours")
                // SIGTERM: serve shuts down gracefully and leaves the manager's socket file in place.
                manager.signal(SIGTERM)
                #expect(await manager.waitForExit() == 0)
                #expect(fileStatus(path)?.isSocket == true)
            }
        }
    }

    @Test("serve clears LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES: an --exec command does not inherit them",
        .enabled(if: canActivate, "needs systemd-socket-activate (Debian's systemd package)"))
    func variablesCleared() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/env.sock"
            try await self.withActivatedServe(at: path, ["--exec", "env | grep -c '^LISTEN_' || true"]) { _ in
                let result = try await runCLI(["request", "--timeout", "60", "--raw", path, "x"])
                #expect(result.status == 0, "stderr: \(result.error)")
                #expect(result.output == "0\n", "LISTEN_ variables seen by the command: \(result.output)")
            }
        }
    }

    @Test("--fd-name picks an inherited socket by its LISTEN_FDNAMES name; an unknown name is a usage error",
        .enabled(if: canActivate, "needs systemd-socket-activate (Debian's systemd package)"))
    func fdName() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/named.sock"
            let manager = try SpawnedProcess(
                executable: Self.activate,
                arguments: ["-l", path, "--fdname", "api", socketIPCBinary, "serve", "--fd-name", "other"]
            )
            try await withProcess(manager) { manager in
                _ = await manager.standardError.waitForLine(containing: "Listening on")
                let result = try await runCLI(["request", "--timeout", "60", path, "hi"])
                #expect(result.status == 3, "the server refused to start, so the connection closed: \(result.error)")
                #expect(await manager.waitForExit() == 64)
                #expect(await manager.standardError.waitForLine(containing: "no inherited socket") != nil)
            }
        }
    }

    #if os(Linux)
    @Test("serve @name: requests, probe and listen reach it by name; no file is made")
    func abstractAddress() async throws {
        let name = "@socketipc-cli-\(getpid())-\(UUID().uuidString.prefix(8))"
        let server = try TestProcess.socketIPC(["serve", name])
        try await withProcess(server) { server in
            #expect(await server.standardOutput.waitForLine(containing: "listening on") == "listening on \(name)")
            let reply = try await runCLI(["request", name, "hi"])
            #expect(reply.output == "reply: \"hi\"\n", "stderr: \(reply.error)")
            let probe = try await runCLI(["probe", "--json", name])
            #expect(probe.status == 0, "\(probe.output)")
            let object = try #require(try parseJSON(probe.output))
            #expect(object["verdict"] as? String == "framed")
            #expect(object["abstract"] as? Bool == true)
            #expect(!FileManager.default.fileExists(atPath: FileManager.default.currentDirectoryPath + "/" + name))
        }
    }

    @Test("serve @name refuses --permissions (no file) and starts with --allow-anyone, which is explicit consent")
    func abstractOptions() async throws {
        let name = "@socketipc-cli-\(getpid())-\(UUID().uuidString.prefix(8))"
        let refused = try await runCLI(["serve", name, "--permissions", "0666"])
        #expect(refused.status == 64)
        #expect(refused.error == "error: \(name) is an abstract address: it has no file; drop --permissions and --create-parent\n")

        let open = try TestProcess.socketIPC(["serve", name, "--allow-anyone"])
        try await withProcess(open) { open in
            #expect(await open.standardOutput.waitForLine(containing: "listening on") == "listening on \(name)")
        }
    }

    @Test(
        "a client refuses a server on @name that runs as another user (the name may be squatted): exit 4, nothing sent",
        .enabled(if: canRunAsAnotherUser, "needs root and setpriv to run the server as another user")
    )
    func abstractSquatter() async throws {
        let name = "@socketipc-cli-squat-\(getpid())-\(UUID().uuidString.prefix(8))"
        // The squatter (uid 65534) takes the name first, serving anyone who comes.
        let squatter = try TestProcess(
            executable: "/usr/bin/setpriv",
            asOtherUser() + [socketIPCBinary, "serve", name, "--allow-anyone"]
        )
        try await withProcess(squatter) { squatter in
            #expect(await squatter.standardOutput.waitForLine(containing: "listening on") == "listening on \(name)")
            let result = try await runCLI(["request", name, "my secret"])
            #expect(result.status == 4, "stderr: \(result.error)")
            #expect(result.output.isEmpty)
            #expect(result.error.contains("runs as uid \(otherUserID)"), "\(result.error)")
            #expect(result.error.contains("nothing was sent"))
            // Nothing reached the squatter: it logged a connection but no request was answered.
            let eof = try await runCLI(["send", "--eof", name, "my secret"])
            #expect(eof.status == 4, "stderr: \(eof.error)")
        }
    }

    @Test(
        "a client refuses a server of another user at a path that user could have made (a socket in a directory any user may write to, as /tmp): exit 4, nothing sent, unless --trust-uid names that user; its own user's server there is served",
        .enabled(if: canRunAsAnotherUser, "needs root and setpriv to run the server as another user")
    )
    func pathSquatter() async throws {
        try await withTemporarySocketDirectory { directory in
            chmod(directory, 0o755)
            let shared = directory + "/shared"
            #expect(mkdir(shared, 0o700) == 0 && chmod(shared, 0o1777) == 0)
            // The squatter (uid 65534) makes the socket first, serving anyone who comes.
            let path = shared + "/app.sock"
            let squatter = try TestProcess(
                executable: "/usr/bin/setpriv",
                asOtherUser() + [socketIPCBinary, "serve", path, "--allow-anyone", "--permissions", "0666"]
            )
            try await withProcess(squatter) { squatter in
                #expect(await squatter.standardOutput.waitForLine(containing: "listening on") == "listening on \(path)")
                // Before, both were served.
                let result = try await runCLI(["request", path, "my secret"])
                #expect(result.status == 4, "stderr: \(result.error)")
                #expect(result.output.isEmpty)
                #expect(result.error.contains("runs as uid \(otherUserID)"), "\(result.error)")
                #expect(result.error.contains("\(shared), a directory any user may write to"), "\(result.error)")
                #expect(result.error.contains("nothing was sent"))
                #expect(result.error.hasSuffix("trust it with --trust-uid \(otherUserID)\n"), "\(result.error)")
                let eof = try await runCLI(["send", "--eof", path, "my secret"])
                #expect(eof.status == 4, "stderr: \(eof.error)")
                // Trusted by name, the same server is served.
                let trusted = try await runCLI(["request", "--trust-uid", "\(otherUserID)", path, "hi"])
                #expect(trusted.status == 0 && trusted.output == "reply: \"hi\"\n", "\(trusted)")
                let sent = try await runCLI(["send", "--trust-uid", "\(otherUserID)", path, "hi"])
                #expect(sent.status == 0, "stderr: \(sent.error)")
                // probe says the same, with the same fix, and looks further once trusted (before, it had no
                // --trust-uid: it could not tell what such a server was).
                let probed = try await runCLI(["probe", path])
                #expect(probed.status == 4, "\(probed)")
                #expect(probed.output.contains("trust it with --trust-uid \(otherUserID)"), "\(probed.output)")
                let probedTrusted = try await runCLI(["probe", "--trust-uid", "\(otherUserID)", path])
                #expect(probedTrusted.status == 0, "\(probedTrusted)")
                #expect(probedTrusted.output.hasPrefix("framed SocketIPC server (protocol version 1) serves you"), "\(probedTrusted.output)")
            }
            // This user's own server in the same directory is served.
            let own = shared + "/own.sock"
            try await withServeCommand(at: own) { _ in
                let answered = try await runCLI(["request", own, "hi"])
                #expect(answered.status == 0 && answered.output == "reply: \"hi\"\n", "\(answered)")
            }
        }
    }

    @Test("a client of an @name nobody serves says so in one line, exit 3")
    func abstractNobody() async throws {
        let name = "@socketipc-cli-none-\(getpid())"
        let result = try await runCLI(["request", name, "hi"])
        #expect(result.status == 3)
        #expect(
            result.error
                == "error: no server listens on the abstract address \(name): start the server (abstract addresses "
                + "exist only while a process listens on them)\n"
        )
    }
    #endif
}
