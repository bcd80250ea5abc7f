import Foundation
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// `socat` and OpenBSD's `nc` talk to EOF-style servers and clients as they are. `.ci/run` installs them; the suite
/// is skipped where they are missing (`apt-get install socat netcat-openbsd`).
@Suite(
    "Interoperability with socat and nc",
    .enabled(if: toolExists("socat") && netcatIsOpenBSD, "needs socat and OpenBSD netcat (nc -U -N)"),
    .timeLimit(.minutes(5)),
    .limitedConcurrency
)
struct InteropTests {
    @Test("socat and nc -U -N as EOF-style clients: the server sees the message and they get the 4-byte ack")
    func plainToolsAsClients() async throws {
        try await withServeCommand(["--mode", "eof"]) { path, server in

            // -t5: after its standard input ends, socat waits up to 5 s (a safety net) for the server's EOF.
            let socat = try await runShell("printf hi | socat -t5 - 'UNIX-CONNECT:\(path)'")
            #expect(socat.status == 0)
            #expect(socat.output == [0, 0, 0, 2])
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 2 bytes")

            // -N: shut down the socket's write side at EOF on standard input, so the server sees the message end.
            let netcat = try await runShell("printf hi | nc -U -N '\(path)'")
            #expect(netcat.status == 0)
            #expect(netcat.output == [0, 0, 0, 2])
            #expect(await server.standardOutput.waitForLine(containing: "received") == "received 2 bytes")
        }
    }

    @Test("socat as the server receives what socket-ipc send --eof sends")
    func socatAsServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/s.sock"
            // -d -d: socat logs `listening on` to standard error once it listens; -u: one direction only.
            let socat = try TestProcess(
                executable: "/usr/bin/env",
                ["socat", "-d", "-d", "-u", "UNIX-LISTEN:\(path)", "STDOUT"]
            )
            try await withProcess(socat) { socat in
                #expect(await socat.standardError.waitForLine(containing: "listening on") != nil)
                let result = try await runCLI(["send", "--socket", path, "--eof", "hello socat"])
                #expect(result.status == 0, "stderr: \(result.error)")
                #expect(result.output == "no acknowledgement\n")
                #expect(await socat.waitForExit() == 0)
                #expect(await socat.standardOutput.text() == "hello socat")
            }
        }
    }
}
