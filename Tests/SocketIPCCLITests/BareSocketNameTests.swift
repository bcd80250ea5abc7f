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
            #expect(await client.standardError.text().hasPrefix("error: "))
            #expect(fileStatus(missing) == nil)
        }
    }
}
