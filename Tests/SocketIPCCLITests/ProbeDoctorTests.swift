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

/// Issue 12: `socket-ipc probe PATH`, the "why can't I connect" doctor, against a real object for each verdict: its
/// verdict line, its `--json` form field by field, and its exit status.
@Suite("socket-ipc probe: the why-can't-I-connect doctor", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ProbeDoctorTests {
    /// `probe PATH --json arguments...`, parsed.
    /// - Returns: The exit status and the JSON object.
    private func probeJSON(_ path: String, _ arguments: [String] = []) async throws -> (status: Int32, json: [String: Any]) {
        let result = try await runCLI(["probe", path, "--json"] + arguments)
        #expect(result.output.split(separator: "\n").count == 1, "stdout: \(result.output)")
        let object = try JSONSerialization.jsonObject(with: Data(result.output.utf8))
        return (result.status, try #require(object as? [String: Any], "stdout: \(result.output)"))
    }

    /// The first line of `text`.
    private func firstLine(_ text: String) -> String {
        String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
    }

    @Test("no such path: verdict missing, exit 3, with the fix; the directory is there and safe")
    func missingPath() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/none.sock"
            let result = try await runCLI(["probe", path])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output)
                    == "no server at \(path): no such file: start the server (socket-ipc serve \(path)), or check the path"
            )
            #expect(result.output.contains("  socket:    none (No such file or directory)"), "stdout: \(result.output)")
            #expect(result.error == "")

            let (status, json) = try await self.probeJSON(path)
            #expect(status == 3)
            #expect(json["verdict"] as? String == "missing")
            #expect(json["servesYou"] as? Bool == false)
            #expect(json["exitStatus"] as? Int == 3)
            #expect(json["socket"] is NSNull)
            #expect(json["canConnect"] is NSNull)
            #expect(json["peer"] is NSNull)
            let directoryObject = try #require(json["directory"] as? [String: Any])
            #expect(directoryObject["path"] as? String == directory)
            #expect(directoryObject["type"] as? String == "directory")
            #expect(directoryObject["mode"] as? String == "0700")
            #expect(directoryObject["uid"] as? Int == Int(geteuid()))
            #expect(directoryObject["safe"] as? Bool == true)
            #expect(directoryObject["unsafeReason"] is NSNull)
        }
    }

    @Test("a missing parent directory: verdict missingParent, naming the directory")
    func missingParent() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/nope/s.sock"
            let result = try await runCLI(["probe", path])
            #expect(result.status == 3)
            #expect(self.firstLine(result.output).hasPrefix("no such directory \(directory)/nope (the parent of \(path)): "))
            let (_, json) = try await self.probeJSON(path)
            #expect(json["verdict"] as? String == "missingParent")
            let directoryObject = try #require(json["directory"] as? [String: Any])
            #expect(directoryObject["type"] is NSNull)
            #expect(directoryObject["safe"] is NSNull)
        }
    }

    @Test("a regular file, a directory and a FIFO are not sockets: verdict notSocket, the kind named")
    func notSockets() async throws {
        try await withTemporarySocketDirectory { directory in
            let file = directory + "/file.sock"
            #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
            let folder = directory + "/folder.sock"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            let fifo = directory + "/fifo.sock"
            #expect(mkfifo(fifo, 0o600) == 0)
            for (path, kind, type) in [
                (file, "a regular file", "file"), (folder, "a directory", "directory"),
                (fifo, "a FIFO (named pipe)", "fifo"),
            ] {
                let result = try await runCLI(["probe", path])
                #expect(result.status == 3, "\(path)")
                #expect(self.firstLine(result.output).hasPrefix("\(path) is \(kind), not a socket: "), "\(result.output)")
                let (_, json) = try await self.probeJSON(path)
                #expect(json["verdict"] as? String == "notSocket")
                let socket = try #require(json["socket"] as? [String: Any])
                #expect(socket["type"] as? String == type)
                #expect(socket["uid"] as? Int == Int(geteuid()))
                #expect(json["canConnect"] is NSNull)
            }
        }
    }

    @Test("a symbolic link says where it points and what is there; one to a live server is followed")
    func symbolicLinks() async throws {
        try await withServeCommand { serverPath, server in
            let directory = String(serverPath.dropLast("/s.sock".count))
            let dangling = directory + "/dangling.sock"
            #expect(symlink(directory + "/nothing", dangling) == 0)
            let toFile = directory + "/to-file.sock"
            #expect(FileManager.default.createFile(atPath: directory + "/plain", contents: Data()))
            #expect(symlink("plain", toFile) == 0)
            let toServer = directory + "/to-server.sock"
            #expect(symlink("s.sock", toServer) == 0)

            let danglingResult = try await runCLI(["probe", dangling])
            #expect(danglingResult.status == 3)
            #expect(
                self.firstLine(danglingResult.output).hasPrefix(
                    "\(dangling) is a symbolic link to \(directory)/nothing, where there is nothing: not a socket"
                ),
                "\(danglingResult.output)"
            )
            let (_, danglingJSON) = try await self.probeJSON(dangling)
            #expect(danglingJSON["verdict"] as? String == "notSocket")
            let danglingLink = try #require(danglingJSON["link"] as? [String: Any])
            #expect(danglingLink["target"] as? String == directory + "/nothing")
            #expect(danglingLink["type"] is NSNull)

            let fileResult = try await runCLI(["probe", toFile])
            #expect(fileResult.status == 3)
            #expect(
                self.firstLine(fileResult.output).hasPrefix(
                    "\(toFile) is a symbolic link to plain, which is a regular file, not a socket"
                ),
                "\(fileResult.output)"
            )

            let (status, json) = try await self.probeJSON(toServer)
            #expect(status == 0)
            #expect(json["verdict"] as? String == "framed")
            let socket = try #require(json["socket"] as? [String: Any])
            #expect(socket["type"] as? String == "symlink")
            let link = try #require(json["link"] as? [String: Any])
            #expect(link["target"] as? String == "s.sock")
            #expect(link["type"] as? String == "socket")
            let lock = try #require(json["lock"] as? [String: Any])
            #expect(lock["path"] as? String == serverPath + ".lock")
            #expect(lock["holderPid"] as? Int == Int(server.processID))
        }
    }

    @Test("a stale socket (bound and closed, never unlinked): verdict stale, the lock free, the fix in one line")
    func staleSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stale.sock"
            try leaveStaleSocket(at: path)
            let result = try await runCLI(["probe", path])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output)
                    == "no server at \(path): stale socket, no process holds \(path).lock: start the server again to "
                    + "reclaim it"
            )
            #expect(result.output.contains("  lock:      \(path).lock, missing"), "stdout: \(result.output)")
            let (status, json) = try await self.probeJSON(path)
            #expect(status == 3)
            #expect(json["verdict"] as? String == "stale")
            #expect(json["fix"] as? String == "start the server again to reclaim it")
            #expect(json["canConnect"] as? Bool == true)
            let socket = try #require(json["socket"] as? [String: Any])
            #expect(socket["type"] as? String == "socket")
            let lock = try #require(json["lock"] as? [String: Any])
            #expect(lock["exists"] as? Bool == false)
            #expect(lock["held"] as? Bool == false)
            #expect(lock["holderPid"] is NSNull)
        }
    }

    @Test("a serve killed with SIGKILL leaves a stale socket and a free lock file")
    func killedServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try await leaveStaleSocketOfKilledServe(at: path)
            let (status, json) = try await self.probeJSON(path)
            #expect(status == 3)
            #expect(json["verdict"] as? String == "stale")
            let lock = try #require(json["lock"] as? [String: Any])
            #expect(lock["exists"] as? Bool == true)
            #expect(lock["held"] as? Bool == false)
        }
    }

    @Test("a socket nobody listens on whose lock file is held: verdict notListening, naming the holder's pid")
    func lockHeldButNotListening() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try leaveStaleSocket(at: path)
            let lock = try HeldLock(path: path + ".lock")
            defer { lock.release() }
            let result = try await runCLI(["probe", path])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output).hasPrefix(
                    "no server listens on \(path), but process \(getpid())"
                ),
                "stdout: \(result.output)"
            )
            let (_, json) = try await self.probeJSON(path)
            #expect(json["verdict"] as? String == "notListening")
            let lockObject = try #require(json["lock"] as? [String: Any])
            #expect(lockObject["held"] as? Bool == true)
            #expect(lockObject["holderPid"] as? Int == Int(getpid()))
        }
    }

    @Test("a live framed server: exit 0, protocol version, peer, owner, mode, safe directory and the lock's holder")
    func liveFramedServer() async throws {
        try await withServeCommand { path, server in
            let result = try await runCLI(["probe", path])
            #expect(result.status == 0, "stdout: \(result.output)")
            #expect(
                self.firstLine(result.output)
                    == "framed SocketIPC server (protocol version 1) serves you, peer pid=\(server.processID) "
                    + "uid=\(geteuid()) gid=\(getegid())"
            )
            #expect(
                result.output.contains("  lock:      \(path).lock, held by process \(server.processID) (socket-ipc)"),
                "stdout: \(result.output)"
            )
            #expect(result.output.contains("  server:    pid=\(server.processID)"), "stdout: \(result.output)")

            let (status, json) = try await self.probeJSON(path)
            #expect(status == 0)
            #expect(json["path"] as? String == path)
            #expect(json["verdict"] as? String == "framed")
            #expect(json["servesYou"] as? Bool == true)
            #expect(json["exitStatus"] as? Int == 0)
            #expect(json["protocolVersion"] as? Int == 1)
            #expect(json["fix"] is NSNull)
            #expect(json["goAway"] is NSNull)
            #expect(json["link"] is NSNull)
            #expect(json["canConnect"] as? Bool == true)
            #expect(json["pathLength"] as? Int == path.utf8.count)
            #expect(json["pathLimit"] as? Int == 107)
            let peer = try #require(json["peer"] as? [String: Any])
            #expect(peer["pid"] as? Int == Int(server.processID))
            #expect(peer["uid"] as? Int == Int(geteuid()))
            #expect(peer["gid"] as? Int == Int(getegid()))
            #expect(peer["command"] as? String == "socket-ipc")
            let socket = try #require(json["socket"] as? [String: Any])
            #expect(socket["type"] as? String == "socket")
            #expect(socket["uid"] as? Int == Int(geteuid()))
            #expect(socket["gid"] as? Int == Int(getegid()))
            #expect(socket["mode"] as? String == "0600")
            if geteuid() == 0 { #expect(socket["user"] as? String == "root") }
            let directoryObject = try #require(json["directory"] as? [String: Any])
            #expect(directoryObject["safe"] as? Bool == true)
            #expect(directoryObject["mode"] as? String == "0700")
            let lock = try #require(json["lock"] as? [String: Any])
            #expect(lock["path"] as? String == path + ".lock")
            #expect(lock["exists"] as? Bool == true)
            #expect(lock["held"] as? Bool == true)
            #expect(lock["holderPid"] as? Int == Int(server.processID))
            #expect(lock["holderCommand"] as? String == "socket-ipc")
        }
    }

    @Test("a live EOF-style server: verdict eof, exit 0, and it read only an empty message")
    func liveEOFServer() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in
            let (status, json) = try await self.probeJSON(path, ["--timeout", "30"])
            #expect(status == 0)
            #expect(json["verdict"] as? String == "eof")
            #expect(json["protocolVersion"] is NSNull)
            #expect(json["servesYou"] as? Bool == true)
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 0 bytes")
        }
    }

    @Test("another program's listener: verdict otherProgram, exit 3, naming its process")
    func otherProgram() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/other.sock"
            let listener = try GreetingListener(path: path, greeting: "220 smtp.example ESMTP ready\r\n")
            defer { listener.stop() }
            let result = try await runCLI(["probe", path, "--timeout", "30"])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output).hasPrefix("something listens on \(path) but does not speak SocketIPC"),
                "stdout: \(result.output)"
            )
            #expect(result.output.contains("process \(getpid())"), "stdout: \(result.output)")
            let (status, json) = try await self.probeJSON(path, ["--timeout", "30"])
            #expect(status == 3)
            #expect(json["verdict"] as? String == "otherProgram")
            let peer = try #require(json["peer"] as? [String: Any])
            #expect(peer["pid"] as? Int == Int(getpid()))
        }
    }

    @Test("a listener whose accept queue stays full: verdict queueFull, exit 3")
    func fullAcceptQueue() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/full.sock"
            let listener = try FullQueueListener(path: path)
            defer { listener.stop() }
            let result = try await runCLI(["probe", path, "--timeout", "0.3"])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output).hasPrefix(
                    "a listener on \(path) accepted no connection within 0.3 s: its accept queue is full"
                ),
                "stdout: \(result.output)"
            )
            let (status, json) = try await self.probeJSON(path, ["--timeout", "0.3"])
            #expect(status == 3)
            #expect(json["verdict"] as? String == "queueFull")
        }
    }

    @Test("a listener that accepts nothing and says nothing: verdict silent, exit 3 (no connection), as request's")
    func silentListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try bindUnixSocket(at: path)
            defer { closeDescriptor(listener) }
            #expect(listen(listener, 16) == 0)
            let result = try await runCLI(["probe", path, "--timeout", "0.3"])
            #expect(result.status == 3)
            #expect(
                self.firstLine(result.output).hasPrefix("something listens on \(path) but sent nothing within 0.3 s"),
                "stdout: \(result.output)"
            )
            let (status, json) = try await self.probeJSON(path, ["--timeout", "0.3"])
            #expect(status == 3)
            #expect(json["verdict"] as? String == "silent")
            #expect(json["exitStatus"] as? Int == 3)
        }
    }

    @Test("a listener that closes every connection at once: verdict closedAtOnce, exit 3")
    func closedAtOnce() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/closes.sock"
            let listener = try ClosingListener(path: path)
            defer { listener.stop() }
            let (status, json) = try await self.probeJSON(path, ["--timeout", "30"])
            #expect(status == 3)
            #expect(json["verdict"] as? String == "closedAtOnce")
            #expect(json["servesYou"] as? Bool == false)
        }
    }

    @Test("a path longer than sun_path: verdict pathTooLong with its length and the limit, exit 64 as every command's (before: 3)")
    func pathTooLong() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/" + String(repeating: "a", count: 120) + ".sock"
            let result = try await runCLI(["probe", path])
            #expect(result.status == 64)
            #expect(
                self.firstLine(result.output).hasPrefix(
                    "\(path) is \(path.utf8.count) bytes, longer than the 107 that sun_path holds: use a shorter path"
                ),
                "stdout: \(result.output)"
            )
            let (_, json) = try await self.probeJSON(path)
            #expect(json["verdict"] as? String == "pathTooLong")
            #expect(json["pathLength"] as? Int == path.utf8.count)
            #expect(json["pathLimit"] as? Int == 107)
        }
    }

    @Test("a directory others may write without the sticky bit is reported unsafe, with the reason")
    func unsafeDirectory() async throws {
        try await withTemporarySocketDirectory { directory in
            #expect(chmod(directory, 0o777) == 0)
            let path = directory + "/s.sock"
            try leaveStaleSocket(at: path)
            let result = try await runCLI(["probe", path])
            #expect(result.output.contains("mode 0777: not safe: \(directory)"), "stdout: \(result.output)")
            let (_, json) = try await self.probeJSON(path)
            let directoryObject = try #require(json["directory"] as? [String: Any])
            #expect(directoryObject["mode"] as? String == "0777")
            #expect(directoryObject["safe"] as? Bool == false)
            #expect((directoryObject["unsafeReason"] as? String)?.contains("no sticky bit") == true)
        }
    }

    @Test("--quiet prints the verdict line only")
    func quiet() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/none.sock"
            let result = try await runCLI(["probe", path, "--quiet"])
            #expect(result.status == 3)
            #expect(result.output.split(separator: "\n").count == 1, "stdout: \(result.output)")
            #expect(result.output.hasPrefix("no server at \(path): no such file"))
        }
    }

    @Test(
        "on a terminal the verdict is coloured, and never with NO_COLOR",
        .enabled(if: toolExists("script"), "needs script(1) for a terminal")
    )
    func noColor() async throws {
        try await withServeCommand { path, _ in
            let command = "'\(socketIPCBinary)' probe '\(path)'"
            let coloured = try await runShell("env -u NO_COLOR TERM=xterm script -qec \"\(command)\" /dev/null")
            #expect(coloured.status == 0)
            #expect(coloured.output.contains(0x1B), "no colour on a terminal: \(String(decoding: coloured.output, as: UTF8.self))")
            let plain = try await runShell("env NO_COLOR=1 TERM=xterm script -qec \"\(command)\" /dev/null")
            #expect(plain.status == 0)
            #expect(String(decoding: plain.output, as: UTF8.self).contains("serves you"))
            #expect(!plain.output.contains(0x1B))
        }
    }

    @Test("a huge --timeout (inf) is taken as very long, never a crash")
    func hugeTimeout() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stale.sock"
            try leaveStaleSocket(at: path)
            let result = try await runCLI(["probe", path, "--timeout", "inf"])
            #expect(result.status == 3, "stderr: \(result.error)")
            #expect(self.firstLine(result.output).hasPrefix("no server at \(path): stale socket"))
        }
    }

    @Test("the help documents the verdicts, the JSON schema, the exit statuses and examples")
    func help() async throws {
        let result = try await runCLI(["probe", "--help"])
        #expect(result.status == 0)
        for text in ["--json", "queueFull", "lock {path, exists, held, holderPid, holderCommand}", "Examples:", "exit statuses"] {
            #expect(result.output.contains(text), "\(text) missing from the help")
        }
    }
}
