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

/// Issue 12: every client command whose connect fails says the precise cause and the fix in one line that names the
/// path, in the words of `socket-ipc probe` (``Diagnosis``).
@Suite("client commands explain a failed connect in one line", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ConnectDiagnosisTests {
    /// One invocation of each client command against `path`.
    private func clientCommands(_ path: String) -> [[String]] {
        [
            ["request", path, "hi"], ["send", path, "hi"], ["send", path, "--eof", "hi"],
            ["call", path, "demo.echo", "{}"], ["watch", path, "demo.count", "3"],
        ]
    }

    @Test("request to a stale socket says stale and the fix, in one line, exit 3")
    func staleSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stale.sock"
            try leaveStaleSocket(at: path)
            let expected =
                "error: no server at \(path): stale socket, no process holds \(path).lock: start the server again to "
                + "reclaim it\n"
            for command in self.clientCommands(path) {
                let result = try await runCLI(command)
                #expect(result.status == 3, "\(command)")
                #expect(result.error == expected, "\(command)")
                #expect(result.output == "", "\(command)")
            }
        }
    }

    @Test("a regular file, a missing parent directory and a missing file are each named, exit 3")
    func notASocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let file = directory + "/file.sock"
            #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
            let orphan = directory + "/nope/s.sock"
            let missing = directory + "/none.sock"
            for (path, prefix) in [
                (file, "error: \(file) is a regular file, not a socket: "),
                (orphan, "error: no such directory \(directory)/nope (the parent of \(orphan)): "),
                (missing, "error: no server at \(missing): no such file: "),
            ] {
                for command in self.clientCommands(path) {
                    let result = try await runCLI(command)
                    #expect(result.status == 3, "\(command): \(result.error)")
                    #expect(result.error.hasPrefix(prefix), "\(command): \(result.error)")
                    #expect(result.error.split(separator: "\n").count == 1, "\(command): \(result.error)")
                }
            }
        }
    }

    @Test("a server killed with SIGKILL: request says stale, exit 3")
    func killedServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            try await leaveStaleSocketOfKilledServe(at: path)
            let result = try await runCLI(["request", path, "hi"])
            #expect(result.status == 3)
            #expect(result.error.hasPrefix("error: no server at \(path): stale socket, no process holds \(path).lock"))
        }
    }
}
