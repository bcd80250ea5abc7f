import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

@Suite("Bare socket names", .timeLimit(.minutes(5)), .limitedConcurrency)
struct BareSocketNameTests {
    @Test("serve --socket NAME (no '/') listens in $XDG_RUNTIME_DIR, and clients given the same name find it")
    func bareName() async throws {
        try await withTemporarySocketDirectory { directory in
            let server = try TestProcess(
                executable: "/usr/bin/env",
                ["XDG_RUNTIME_DIR=\(directory)", socketIPCBinary, "serve", "--socket", "app.sock"]
            )
            try await withProcess(server) { server in
                #expect(await server.standardOutput.waitForLine(containing: "listening on") == "listening on \(directory)/app.sock")
                #expect(fileStatus(directory + "/app.sock")?.isSocket == true)
                let client = try TestProcess(
                    executable: "/usr/bin/env",
                    ["XDG_RUNTIME_DIR=\(directory)", socketIPCBinary, "request", "--socket", "app.sock", "hi"]
                )
                #expect(await client.waitForExit() == 0)
                #expect(await client.standardOutput.text() == "reply: \"hi\"\n")
            }
        }
    }

    @Test("a client given a bare name whose runtime directory does not exist says no server is there, and creates nothing")
    func bareNameWithoutDirectory() async throws {
        try await withTemporarySocketDirectory { directory in
            let missing = directory + "/run"
            let client = try TestProcess(
                executable: "/usr/bin/env",
                ["XDG_RUNTIME_DIR=\(missing)", socketIPCBinary, "request", "--socket", "app.sock", "hi"]
            )
            #expect(await client.waitForExit() == 3, "3: cannot connect")
            let error = await client.standardError.text()
            // A note that the variable is not used, then the error.
            #expect(error.hasPrefix("note: XDG_RUNTIME_DIR=\(missing) is not used"), "stderr: \(error)")
            #expect(error.contains("\nerror: "), "stderr: \(error)")
            #expect(fileStatus(missing) == nil)
        }
    }

    @Test("XDG_RUNTIME_DIR set to a directory others may write is not used, and a note on standard error says so")
    func unsafeRuntimeDirectoryNoted() async throws {
        try await withTemporarySocketDirectory { directory in
            let open = directory + "/open"
            try #require(mkdir(open, 0o700) == 0 && chmod(open, 0o777) == 0)
            let client = try TestProcess(
                executable: "/usr/bin/env",
                ["XDG_RUNTIME_DIR=\(open)", socketIPCBinary, "request", "app.sock", "hi"]
            )
            #expect(await client.waitForExit() == 3, "3: cannot connect")
            let error = await client.standardError.text()
            #expect(error.hasPrefix("note: XDG_RUNTIME_DIR=\(open) is not used: "), "stderr: \(error)")
            #expect(error.contains("; using /"), "stderr: \(error)")
        }
    }
}
