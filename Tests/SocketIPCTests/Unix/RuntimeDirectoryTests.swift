import Foundation
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

/// `RuntimeDirectory`: `$XDG_RUNTIME_DIR` when the XDG spec's requirements hold, else a private fallback.
@Suite("The runtime directory", .timeLimit(.minutes(5)), .limitedConcurrency)
struct RuntimeDirectoryTests {
    @Test("XDG_RUNTIME_DIR is used when it is an absolute path to a 0700 directory of this user")
    func environment() async throws {
        try await withTemporarySocketDirectory { directory in
            let runtime = try RuntimeDirectory.current(
                environment: ["XDG_RUNTIME_DIR": directory], fallbackParent: directory)
            #expect(runtime.path == directory)
            #expect(runtime.source == .environment)
            #expect(runtime.fallbackReason == nil)
            #expect(try runtime.socketPath("app.sock").path == directory + "/app.sock")
            #expect(try directoryEntries(directory) == [], "no fallback was made")
        }
    }

    @Test("without XDG_RUNTIME_DIR, the fallback is made with mode 0700 and used")
    func fallback() async throws {
        try await withTemporarySocketDirectory { directory in
            let runtime = try RuntimeDirectory.current(environment: [:], fallbackParent: directory)
            let expected = directory + "/socketipc-\(geteuid())"
            #expect(runtime.path == expected)
            #expect(runtime.source == .fallback)
            #expect(runtime.fallbackReason == "XDG_RUNTIME_DIR is not set")
            #expect(fileStatus(expected)?.mode == S_IFDIR | 0o700)
            #expect(fileStatus(expected)?.uid == geteuid())
            let again = try RuntimeDirectory.current(environment: [:], fallbackParent: directory)
            #expect(again == runtime, "an existing private fallback is used as it is")
            try await withEchoServer(path: try runtime.socketPath("app.sock").path) { _ in
                #expect(fileStatus(expected + "/app.sock") != nil)
            }
        }
    }

    @Test("an unusable XDG_RUNTIME_DIR is passed over for the fallback, with the reason",
          arguments: ["relative", "missing", "0755", "symlink", "other user's"])
    func unusableEnvironment(kind: String) async throws {
        if kind == "other user's" && !OtherUser.canOwnFiles { return }
        try await withTemporarySocketDirectory { directory in
            let candidate = directory + "/xdg"
            var value = candidate
            switch kind {
            case "relative": value = "xdg"
            case "missing": break
            case "0755": try makeDirectory(candidate, mode: 0o755)
            case "symlink":
                try makeDirectory(directory + "/real", mode: 0o700)
                symlink(directory + "/real", candidate)
            default:
                try makeDirectory(candidate, mode: 0o700)
                chown(candidate, OtherUser.uid, OtherUser.gid)
            }
            let runtime = try RuntimeDirectory.current(environment: ["XDG_RUNTIME_DIR": value], fallbackParent: directory)
            #expect(runtime.source == .fallback)
            #expect(runtime.path == directory + "/socketipc-\(geteuid())")
            #expect(runtime.fallbackReason?.contains("XDG_RUNTIME_DIR=\(value) is not used") == true)
        }
    }

    @Test("a fallback that exists but is open to others, another user's, a symbolic link or a file is refused as it is",
          arguments: ["0755", "0770", "other user's", "symlink", "file"])
    func unsafeFallback(kind: String) async throws {
        if kind == "other user's" && !OtherUser.canOwnFiles { return }
        try await withTemporarySocketDirectory { directory in
            let fallback = directory + "/socketipc-\(geteuid())"
            switch kind {
            case "0755": try makeDirectory(fallback, mode: 0o755)
            case "0770": try makeDirectory(fallback, mode: 0o770)
            case "other user's":
                try makeDirectory(fallback, mode: 0o700)
                chown(fallback, OtherUser.uid, OtherUser.gid)
            case "symlink":
                try makeDirectory(directory + "/elsewhere", mode: 0o700)
                symlink(directory + "/elsewhere", fallback)
            default: try Data().write(to: URL(fileURLWithPath: fallback))
            }
            let before = try #require(fileStatus(fallback))
            let error = #expect(throws: SocketIPCError.self) {
                try RuntimeDirectory.current(environment: [:], fallbackParent: directory)
            }
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains(fallback) == true)
            let after = try #require(fileStatus(fallback))
            #expect(after.mode == before.mode && after.uid == before.uid && after.inode == before.inode,
                    "it is refused, never repaired")
        }
    }

    @Test("with create: false a missing fallback is named but not made")
    func noCreate() async throws {
        try await withTemporarySocketDirectory { directory in
            let runtime = try RuntimeDirectory.current(environment: [:], fallbackParent: directory, create: false)
            #expect(runtime.path == directory + "/socketipc-\(geteuid())")
            #expect(try directoryEntries(directory) == [])
        }
    }

    @Test("only a plain file name names a socket in it", arguments: ["", ".", "..", "a/b", "/abs"])
    func badNames(name: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let runtime = try RuntimeDirectory.current(environment: ["XDG_RUNTIME_DIR": directory])
            #expect(throws: SocketIPCError.self) { try runtime.socketPath(name) }
        }
    }
}
