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

/// `socket-ipc serve` and the socket file, run as another user or under an unusual umask.
@Suite("serve and the socket file", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketFileCLITests {
    @Test(
        "serve, run as another user, refuses root's live 0600 socket in a shared sticky directory and leaves it alone",
        .enabled(if: geteuid() == 0 && toolExists("setpriv"), "needs root and setpriv")
    )
    func anotherUsersLiveSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            chmod(directory, 0o755)
            let shared = directory + "/shared"
            mkdir(shared, 0o700)
            chmod(shared, 0o1777)
            let path = shared + "/victim.sock"
            let victim = try listeningSocket(at: path, mode: 0o600)
            defer { close(victim) }
            let before = try #require(fileStatus(path))
            let server = try TestProcess(
                executable: "/usr/bin/env",
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", socketIPCBinary, "serve", "--socket", path]
            )
            let status = await server.waitForExit()
            let error = await server.standardError.text()
            #expect(status == 73, "EX_CANTCREAT: the socket cannot be served")
            #expect(error.contains("Permission denied"), "the cause is named: \(error)")
            #expect(error.contains("left untouched"), "\(error)")
            #expect(fileStatus(path) == before, "the victim's socket file is unchanged")
            #expect(fileStatus(path + ".lock") == nil, "the refused server removed its own lock file")
            let client = makeUnixStreamSocket()
            defer { close(client) }
            #expect(connectUnixSocket(client, to: path) == 0, "the victim still accepts connections")
        }
    }

    @Test(
        "the socket file has exactly the permissions asked for under umask 000 and 077",
        arguments: [("000", "0666"), ("077", "0666"), ("000", "0640"), ("077", "0640"), ("077", "0700")]
    )
    func exactPermissions(umask: String, permissions: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try await withServeCommand(at: path, ["--permissions", permissions], shellSetup: "umask \(umask)") { _ in
                let status = try #require(fileStatus(path))
                #expect(status.isSocket)
                #expect(status.permissions == UInt32(permissions, radix: 8))
                #expect(
                    try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["s.sock", "s.sock.lock"],
                    "the private directory the socket was bound in is gone"
                )
            }
        }
    }
}

/// A listening socket of this process at `path` with `mode`.
private func listeningSocket(at path: String, mode: mode_t) throws -> Int32 {
    let descriptor = makeUnixStreamSocket()
    guard withSocketAddress(path, { bind(descriptor, $0, $1) }) == 0, chmod(path, mode) == 0, listen(descriptor, 8) == 0
    else {
        close(descriptor)
        throw POSIXError(.EADDRINUSE)
    }
    return descriptor
}

extension SocketFileCLITests {
    @Test(
        "serve and listen on a path taken by something that is not a socket exit 73 (EX_CANTCREAT), name it, and leave it untouched",
        arguments: [["serve"], ["listen"]], ["fifo", "symlink", "file"]
    )
    func pathTaken(command: [String], kind: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/taken.sock"
            switch kind {
            case "fifo": #expect(mkfifo(path, 0o600) == 0)
            case "symlink": #expect(symlink(directory + "/elsewhere", path) == 0)
            default: #expect(FileManager.default.createFile(atPath: path, contents: Data("keep".utf8)))
            }
            var before = stat()
            #expect(lstat(path, &before) == 0)
            let result = try await runCLI(command + [path])
            #expect(result.status == 73, "stderr: \(result.error)")
            #expect(result.error.contains(path), "the path is named: \(result.error)")
            #expect(!result.output.contains("listening on"))
            var after = stat()
            #expect(lstat(path, &after) == 0 && after.st_ino == before.st_ino && after.st_mode == before.st_mode)
        }
    }

    @Test("a running server whose socket file was removed by hand: probe and a second serve say it can no longer be reached and must be stopped (found by a review: they said \"start the server\" and \"another server is serving\")")
    func removedSocketFile() async throws {
        try await withServeCommand { path, server in
            try #require(unlink(path) == 0)
            let probe = try await runCLI(["probe", "--socket", path])
            #expect(probe.status == 3, "\(probe)")
            #expect(probe.output.contains("its socket file was removed, so it can no longer be reached"), "\(probe)")
            let second = try await runCLI(["serve", "--socket", path])
            #expect(second.status == 73, "\(second)")
            #expect(second.error.contains("a server that can no longer be reached still holds \(path)"), "\(second)")
            #expect(second.error.contains("but its socket file was removed; stop that server (process \(server.processID))"), "\(second)")
        }
    }

    @Test("a running server whose lock file was removed (a cleaner): a second serve exits 73, names the process to stop, and does not say it is not a SocketIPC server's (found by a review)")
    func removedLockFile() async throws {
        try await withServeCommand { path, server in
            try #require(unlink(path + ".lock") == 0)
            let second = try await runCLI(["serve", "--socket", path])
            #expect(second.status == 73, "\(second)")
            #expect(second.error.contains("the listening socket was made by process \(server.processID), uid \(getuid())"), "\(second)")
            #expect(second.error.contains("or a SocketIPC server whose lock file was removed"), "\(second)")
            // The first server is untouched and still serves.
            let served = try await runCLI(["request", "--socket", path, "hi"])
            #expect(served.status == 0, "\(served)")
        }
    }

    @Test("a socket path with a newline is printed on one line, escaped: `listening on` cannot be forged")
    func pathWithNewline() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/a\nlistening on b.sock"
            try await withProcess(try TestProcess.socketIPC(["serve", path])) { server in
                let line = await server.standardOutput.waitForLine(containing: "listening on")
                #expect(line == "listening on " + directory + "/a\\nlistening on b.sock", "\(String(describing: line))")
            }
        }
    }

    @Test("serve with malformed socket-activation variables exits 73 (EX_CANTCREAT) and names them")
    func malformedActivation() async throws {
        // The shell's pid is serve's after exec, so LISTEN_PID names serve.
        let server = try TestProcess.shell(#"LISTEN_PID=$$ LISTEN_FDS=abc exec "$0" serve"#)
        let status = await server.waitForExit()
        let error = await server.standardError.text()
        #expect(status == 73, "stderr: \(error)")
        #expect(error.contains("LISTEN_FDS"), "\(error)")
    }

    @Test("serve whose open file limit holds no connection of its configuration exits 73 (EX_CANTCREAT) and says why, where it listened and closed every connection before")
    func descriptorLimitHoldsNoConnection() async throws {
        try await withTemporarySocketDirectory { directory in
            // 64 descriptors, hard limit included: each connection that passes 4 descriptors needs more than that.
            let server = try TestProcess.shell(
                #"exec prlimit --nofile=64:64 "$0" serve --max-descriptors 4 "$1""#, [directory + "/app.sock"]
            )
            let status = await server.waitForExit()
            let error = await server.standardError.text()
            #expect(status == 73, "stderr: \(error)")
            #expect(error.contains("RLIMIT_NOFILE") && error.contains("holds no connection"), "\(error)")
            #expect(fileStatus(directory + "/app.sock") == nil, "no socket file was left")
        }
    }

    @Test("serve --exec keeps descriptors back for the commands it may run at once: at a low open file limit it serves fewer connections than without --exec (before, connections could take them, and commands failed with EMFILE)")
    func execKeepsDescriptorsForCommands() async throws {
        try await withTemporarySocketDirectory { directory in
            /// The connections `serve` says it serves at 256 descriptors with `arguments`, from its warning at start.
            func servedConnections(_ name: String, _ arguments: [String]) async throws -> Int? {
                let server = try TestProcess.shell(
                    #"exec prlimit --nofile=256:256 "$0" serve "$@""#,
                    [directory + "/" + name] + arguments
                )
                return try await withProcess(server) { server in
                    let warning = await server.standardError.waitForLine(containing: "serving at most")
                    let words = warning?.split(separator: " ") ?? []
                    let at = words.firstIndex(of: "most")
                    return at.flatMap { Int(words[words.index(after: $0)]) }
                }
            }
            let plain = try #require(try await servedConnections("plain.sock", []))
            // 4 commands at once, each with 8 descriptors: 32 fewer for connections.
            let exec = try #require(try await servedConnections("exec.sock", ["--exec", "cat", "--exec-concurrency", "4"]))
            // 256 less the reserve of 32 holds `plain` connections; 32 more kept back hold a seventh fewer.
            #expect(exec < plain && (plain - exec) * 7 == plain, "without --exec \(plain), with it \(exec)")
        }
    }

    @Test("serve raises its open file limit far enough for its connections and for what it keeps back: it then serves them all (before, the reserve taken from the raised limit, an eighth of it, left one connection of 100)")
    func raisedLimitHoldsConnectionsAndReserve() async throws {
        try await withTemporarySocketDirectory { directory in
            // 125 commands at once keep 1,000 descriptors back; the hard limit has room for all.
            let server = try TestProcess.shell(
                #"exec prlimit --nofile=64:20000 "$0" serve "$1" --exec cat --max-connections 100 --exec-concurrency 125"#,
                [directory + "/app.sock"]
            )
            let (listening, errors) = try await withProcess(server) { server in
                let listening = await server.standardOutput.waitForLine(containing: "listening on")
                server.signal(SIGTERM)
                return (listening, await server.standardError.remainingLines())
            }
            #expect(listening != nil, "\(errors)")
            #expect(!errors.contains { $0.contains("serving at most") }, "\(errors)")
        }
    }
}
