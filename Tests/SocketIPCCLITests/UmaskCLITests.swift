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

@Suite(
    "serve: a umask that takes the owner's bits",
    .timeLimit(.minutes(2)),
    .enabled(if: canRunAsAnotherUser, "needs root and setpriv (Linux only)"),
    .limitedConcurrency
)
struct UmaskCLITests {
    @Test("under umask 0700, serve as a user other than root makes its parent directories and its private directory with mode 0700 all the same, and serves (found by a review: 'Permission denied' on the directory it had just made)")
    func ownerBitsMasked() async throws {
        try await withTemporarySocketDirectory { directory in
            chown(directory, uid_t(otherUserID), gid_t(otherUserID))
            chmod(directory, 0o755)
            let path = directory + "/made/here/s.sock"
            let setup = "umask 0700; exec /usr/bin/setpriv \(asOtherUser().joined(separator: " ")) \"$0\" \"$@\""
            try await withServeCommand(at: path, ["--create-parent"], shellSetup: setup) { server in
                for made in [directory + "/made", directory + "/made/here"] {
                    #expect(fileStatus(made)?.permissions == 0o700, "\(made)")
                }
                #expect(fileStatus(path)?.permissions == 0o600)
                let answer = try await runCLIAsOtherUser(["request", "--socket", path, "hi"])
                #expect(answer.status == 0, "\(answer.error)")
                #expect(answer.output == "reply: \"hi\"\n")
                server.signal(SIGTERM)
                #expect(await server.waitForExit() == 0)
            }
        }
    }
}
