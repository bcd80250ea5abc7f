import Foundation
import NIOCore
import SocketIPC
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

@Suite("Owning the socket file", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketFileOwnershipTests {
    @Test("a second server on a live path fails with addressInUse; the first keeps its inode and keeps answering")
    func secondServer() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/live.sock"
            try await withEchoServer(path: path) { _ in
                let before = try #require(fileStatus(path))
                let second = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
                let error = await #expect(throws: SocketIPCError.self) { try await second.run() }
                #expect(error?.code == .addressInUse)
                #expect(error?.message.contains(path) == true)
                #expect(error?.message.contains("by process \(getpid())") == true, "the lock file names its holder")
                #expect(fileStatus(path)?.inode == before.inode)
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "still here")) }
                #expect(String(buffer: reply) == "still here")
            }
            #expect(fileStatus(path) == nil, "the socket file is removed on shutdown")
            #expect(fileStatus(path + ".lock") == nil, "the lock file is removed on shutdown")
        }
    }

    @Test("a stale socket file (nobody listening) is replaced and the server starts")
    func staleSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stale.sock"
            try makeStaleSocket(at: path)
            #expect(fileStatus(path) != nil)
            try await withEchoServer(path: path) { _ in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "fresh")) }
                #expect(String(buffer: reply) == "fresh")
            }
        }
    }

    @Test("a socket another program listens on (without our lock) is left alone")
    func foreignListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/foreign.sock"
            let descriptor = try makeStaleSocket(at: path, listening: true)
            defer { close(descriptor) }
            let before = try #require(fileStatus(path))
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .addressInUse)
            #expect(fileStatus(path)?.inode == before.inode)
        }
    }

    @Test("a regular file, a directory or a symbolic link at the path is refused and left untouched",
          arguments: ["file", "directory", "symlink", "dangling symlink"])
    func occupied(kind: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/occupied.sock"
            let target = directory + "/target"
            switch kind {
            case "file": try Data("precious".utf8).write(to: URL(fileURLWithPath: path))
            case "directory": try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            case "symlink":
                try Data("precious".utf8).write(to: URL(fileURLWithPath: target))
                try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: target)
            default: try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: target)
            }
            let before = try #require(fileStatus(path))
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .pathOccupied)
            #expect(error?.message.contains("left untouched") == true)
            let after = try #require(fileStatus(path))
            #expect(after.inode == before.inode && after.mode == before.mode)
            if kind == "file" { #expect(try String(contentsOfFile: path, encoding: .utf8) == "precious") }
            if kind == "symlink" { #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious") }
        }
    }

    @Test("a missing parent directory is an error, or is created with mode 0700 when asked")
    func missingParent() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/a/b/server.sock"
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .parentDirectoryMissing)
            #expect(fileStatus(directory + "/a") == nil)

            try await withEchoServer(path: path, configure: { $0.createParentDirectory = true }) { _ in
                let parent = try #require(fileStatus(directory + "/a/b"))
                #expect(parent.mode & 0o777 == 0o700)
                let socket = try #require(fileStatus(path))
                #expect(socket.mode & 0o777 == 0o600)
            }
        }
    }

    @Test("the socket gets the configured mode", arguments: [UInt16(0o600), 0o660, 0o666])
    func mode(mode: UInt16) async throws {
        try await withFramedTestServer(configure: { $0.mode = mode }, makeHandler: { EchoHandler() }) { _, path in
            let identity = try #require(fileStatus(path))
            #expect(identity.mode & 0o777 == mode_t(mode))
        }
    }

    @Test("on shutdown a socket file that was replaced by someone else is not removed")
    func replacedFileSurvives() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/replaced.sock"
            try await withEchoServer(path: path) { _ in
                unlink(path)
                try Data("not yours".utf8).write(to: URL(fileURLWithPath: path))
            }
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "not yours")
        }
    }

    @Test("run() twice is an error")
    func runTwice() async throws {
        try await withTemporarySocketDirectory { directory in
            try await withEchoServer(path: directory + "/twice.sock") { server in
                let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
                #expect(error?.code == .invalidState)
            }
        }
    }
}
