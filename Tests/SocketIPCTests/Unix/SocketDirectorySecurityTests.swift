import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The parent directory check: no directory on the way to the socket may let another user replace the socket file.
@Suite("The socket's directory", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketDirectorySecurityTests {
    @Test("a directory others can write without the sticky bit is refused, and accepted with the opt-out",
          arguments: [mode_t(0o777), 0o770, 0o703])
    func writableByOthers(mode: mode_t) async throws {
        try await withTemporarySocketDirectory { directory in
            let shared = directory + "/shared"
            try makeDirectory(shared, mode: mode)
            let path = shared + "/server.sock"
            let error = await refusal(path)
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains(shared) == true, "the message names the directory")
            #expect(error?.message.contains("mode 0\(String(mode, radix: 8))") == true, "and its mode")
            #expect(error?.message.contains("owner uid \(geteuid())") == true, "and its owner")
            #expect(error?.message.contains("requiresSecureParentDirectory = false") == true, "and the opt-out")
            #expect(try directoryEntries(shared) == [], "nothing was created there")

            try await withEchoServer(path: path, configure: { $0.requiresSecureParentDirectory = false }) { _ in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "ok")) }
                #expect(String(buffer: reply) == "ok")
            }
        }
    }

    @Test("a world-writable directory with the sticky bit (like /tmp) is accepted")
    func sticky() async throws {
        try await withTemporarySocketDirectory { directory in
            let shared = directory + "/sticky"
            try makeDirectory(shared, mode: 0o1777)
            try await withEchoServer(path: shared + "/server.sock") { _ in
                #expect(fileStatus(shared + "/server.sock") != nil)
            }
        }
    }

    @Test("a directory owned by another user (not root) is refused, and accepted with the opt-out",
          .enabled(if: OtherUser.canOwnFiles, "needs root to give a directory away"))
    func ownedByAnotherUser() async throws {
        try await withTemporarySocketDirectory { directory in
            let theirs = directory + "/theirs"
            try makeDirectory(theirs, mode: 0o755)
            #expect(chown(theirs, OtherUser.uid, OtherUser.gid) == 0)
            let path = theirs + "/server.sock"
            let error = await refusal(path)
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains("\(theirs) (owner uid \(OtherUser.uid), mode 0755)") == true)
            #expect(error?.message.contains("another user") == true)
            #expect(try directoryEntries(theirs) == [])

            try await withEchoServer(path: path, configure: { $0.requiresSecureParentDirectory = false }) { _ in
                #expect(fileStatus(path) != nil)
            }
        }
    }

    @Test("an unsafe ancestor is refused too: whoever can rename a directory above can replace the socket")
    func unsafeAncestor() async throws {
        try await withTemporarySocketDirectory { directory in
            let open = directory + "/open"
            try makeDirectory(open, mode: 0o777)
            let mine = open + "/mine"
            try makeDirectory(mine, mode: 0o700)
            let error = await refusal(mine + "/server.sock")
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains("\(open) (owner uid") == true, "the message names the ancestor")
        }
    }

    @Test("a symbolic link to a directory is judged by the directory it leads to")
    func symbolicLinkToDirectory() async throws {
        try await withTemporarySocketDirectory { directory in
            let open = directory + "/open"
            try makeDirectory(open, mode: 0o777)
            symlink(open, directory + "/to-open")
            let error = await refusal(directory + "/to-open/server.sock")
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains(open) == true)

            let mine = directory + "/mine"
            try makeDirectory(mine, mode: 0o700)
            symlink(mine, directory + "/to-mine")
            try await withEchoServer(path: directory + "/to-mine/server.sock") { _ in
                #expect(fileStatus(mine + "/server.sock") != nil)
            }
        }
    }

    @Test("created parent directories get mode 0700 and pass the check")
    func createdParents() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/made/here/server.sock"
            try await withEchoServer(path: path, configure: { $0.createParentDirectory = true }) { _ in
                #expect(fileStatus(directory + "/made")?.mode == S_IFDIR | 0o700)
                #expect(fileStatus(directory + "/made/here")?.mode == S_IFDIR | 0o700)
            }
        }
    }

    @Test("created parents follow no other user's link, and nothing is made before the check refuses",
          .enabled(if: OtherUser.canOwnFiles, "needs root to give a link and a directory away"))
    func createdParentsThroughAnotherUsersEntries() async throws {
        try await withTemporarySocketDirectory { directory in
            // A sticky directory anyone may write (as /tmp), where another user planted a link to one of ours
            // (a review: before, `mkdir -p` made `run/sub` in the link's target, then the check refused).
            let shared = directory + "/shared"
            try makeDirectory(shared, mode: 0o1777)
            let target = directory + "/target"
            try makeDirectory(target, mode: 0o700)
            symlink(target, shared + "/app")
            #expect(lchown(shared + "/app", OtherUser.uid, OtherUser.gid) == 0)
            let throughLink = await refusal(shared + "/app/run/sub/server.sock", createParents: true)
            #expect(throughLink?.code == .insecureDirectory)
            #expect(throughLink?.message.contains("symbolic link \(shared)/app") == true, "the message names the link")
            #expect(try directoryEntries(target) == [], "nothing was made where the link points")

            // Their own directory, writable by anyone, on the way.
            let theirs = shared + "/theirs"
            try makeDirectory(theirs, mode: 0o777)
            #expect(chown(theirs, OtherUser.uid, OtherUser.gid) == 0)
            let inTheirs = await refusal(theirs + "/made/server.sock", createParents: true)
            #expect(inTheirs?.code == .insecureDirectory)
            #expect(try directoryEntries(theirs) == [], "nothing was made in their directory")
        }
    }

    @Test("a link in the way of the directories to make is not followed, even one's own, and what was made is removed")
    func createdParentsStopAtALink() async throws {
        try await withTemporarySocketDirectory { directory in
            let mine = directory + "/mine"
            try makeDirectory(mine, mode: 0o700)
            try makeDirectory(mine + "/made", mode: 0o700)
            // A dangling link: `mkdir -p` through it would make its target.
            #expect(symlink(directory + "/elsewhere", mine + "/made/link") == 0)
            let error = await refusal(mine + "/made/link/sub/server.sock", createParents: true)
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains("\(mine)/made/link is in the way") == true, "the message names the link")
            #expect(fileStatus(directory + "/elsewhere") == nil, "the link's target was not made")
            #expect(try directoryEntries(mine + "/made") == ["link"])

            // `new` is made first, then `..` is met, which would leave the directories checked or made: refused, and
            // `new` is removed again.
            let again = await refusal(mine + "/new/../made/sub/server.sock", createParents: true)
            #expect(again?.code == .invalidPath)
            #expect(try directoryEntries(mine) == ["made"], "the directory made before `..` was removed")
            #expect(try directoryEntries(mine + "/made") == ["link"])
        }
    }

    @Test("a relative path in the working directory is checked like any other")
    func relativePath() async throws {
        let error = await refusal("relative-but-missing/server.sock")
        #expect(error?.code == .parentDirectoryMissing)
    }
}

/// Runs a server on `path` that is expected to refuse to start; returns its error.
private func refusal(_ path: String, createParents: Bool = false) async -> SocketIPCError? {
    var configuration = ServerConfiguration(path: path)
    configuration.createParentDirectory = createParents
    let server = Server.framed(configuration: configuration, logger: testLogger) { EchoHandler() }
    return await #expect(throws: SocketIPCError.self) { try await server.run() }
}
