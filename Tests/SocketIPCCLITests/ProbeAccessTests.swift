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

/// Issue 12: `probe` and the client commands run as another user (with `setpriv`): refused by the server's policy, and
/// refused by the socket file's mode. Both exit 4.
@Suite(
    "socket-ipc probe and clients as another user",
    .timeLimit(.minutes(5)),
    .enabled(if: canRunAsAnotherUser, "needs root and setpriv to run clients as another user"),
    .limitedConcurrency
)
struct ProbeAccessTests {
    /// Runs `socket-ipc arguments...` as another user to completion.
    private func runAsOtherUser(_ arguments: [String]) async throws -> (status: Int32, output: String, error: String) {
        let process = try TestProcess(executable: "/usr/bin/setpriv", asOtherUser() + [socketIPCBinary] + arguments)
        let status = await process.waitForExit()
        return (status, await process.standardOutput.text(), await process.standardError.text())
    }

    @Test("refused by the server's policy: verdict refused with the going-away reason, exit 4")
    func refusedByPolicy() async throws {
        try await withServeCommand(["--permissions", "0666"], directoryMode: 0o755) { path, server in
            let result = try await self.runAsOtherUser(["probe", path])
            #expect(result.status == 4, "stdout: \(result.output) stderr: \(result.error)")
            #expect(
                result.output.hasPrefix(
                    "framed SocketIPC server (protocol version 1) on \(path) does not serve you: its authorization "
                        + "policy refused uid \(otherUserID)"
                ),
                "stdout: \(result.output)"
            )
            let json = try await self.runAsOtherUser(["probe", path, "--json"])
            #expect(json.status == 4)
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], "\(json.output)"
            )
            #expect(object["verdict"] as? String == "refused")
            #expect(object["servesYou"] as? Bool == false)
            #expect(object["protocolVersion"] as? Int == 1)
            #expect(object["canConnect"] as? Bool == true)
            let goAway = try #require(object["goAway"] as? [String: Any])
            #expect(goAway["reason"] as? Int == 4)
            let peer = try #require(object["peer"] as? [String: Any])
            #expect(peer["pid"] as? Int == Int(server.processID))
            let fix = try #require(object["fix"] as? String)
            #expect(fix.contains("--allow-uid \(otherUserID)"))
        }
    }

    @Test("refused by the socket file's mode: verdict permissionDenied naming mode and owner, exit 4; request too")
    func deniedByMode() async throws {
        try await withServeCommand(["--permissions", "0600"], directoryMode: 0o755) { path, _ in
            let result = try await self.runAsOtherUser(["probe", path])
            #expect(result.status == 4, "stdout: \(result.output) stderr: \(result.error)")
            let owner = "mode 0600, owner \(AccountNamesForTests.user(getuid()))"
            #expect(
                result.output.hasPrefix("no permission to connect to \(path) (\(owner)"),
                "stdout: \(result.output)"
            )
            #expect(result.output.contains("may not connect"), "stdout: \(result.output)")
            let json = try await self.runAsOtherUser(["probe", path, "--json"])
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], "\(json.output)"
            )
            #expect(object["verdict"] as? String == "permissionDenied")
            #expect(object["canConnect"] as? Bool == false)
            #expect(object["exitStatus"] as? Int == 4)
            let socket = try #require(object["socket"] as? [String: Any])
            #expect(socket["mode"] as? String == "0600")

            let request = try await self.runAsOtherUser(["request", path, "hi"])
            #expect(request.status == 4)
            #expect(request.error.hasPrefix("error: no permission to connect to \(path) (\(owner)"), "\(request.error)")
            #expect(request.error.split(separator: "\n").count == 1, "\(request.error)")
        }
    }

    @Test("a directory the other user may not search: verdict permissionDenied naming the directory, exit 4")
    func directoryNotSearchable() async throws {
        try await withServeCommand { path, _ in
            let directory = String(path.dropLast("/s.sock".count))
            let result = try await self.runAsOtherUser(["probe", path])
            #expect(result.status == 4, "stdout: \(result.output) stderr: \(result.error)")
            #expect(
                result.output.hasPrefix(
                    "no permission to reach \(path): uid \(otherUserID) may not search \(directory) (owner "
                ),
                "stdout: \(result.output)"
            )
        }
    }

    @Test("a client refused by the server's policy keeps the library's message, exit 4")
    func clientRefusedByPolicy() async throws {
        try await withServeCommand(["--permissions", "0666"], directoryMode: 0o755) { path, _ in
            let result = try await self.runAsOtherUser(["request", path, "hi"])
            #expect(result.status == 4)
            #expect(result.error.contains("authorization policy refused"), "stderr: \(result.error)")
            #expect(!result.error.contains("no permission to connect"), "stderr: \(result.error)")
        }
    }
}

/// `root (uid 0)`: how `probe` names a user, for expected messages.
enum AccountNamesForTests {
    static func user(_ uid: uid_t) -> String {
        guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "uid \(uid)" }
        return "\(String(cString: name)) (uid \(uid))"
    }
}
