import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

@testable import SocketIPCRuntime

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A running server's socket file and lock file are not taken by a cleaner of old files (found by a review:
/// `systemd-tmpfiles --clean` removed both from an aged directory, since `/proc/net/unix` lists the socket by the
/// private path it was bound at; the server was then unreachable and a second one could claim the path).
@Suite("Socket files of a running server against a cleaner of old files", .timeLimit(.minutes(1)))
struct SocketFileAgingTests {
    /// `systemd-tmpfiles`' path, if it is installed.
    static let tmpfiles: String? = ["/usr/bin/systemd-tmpfiles", "/bin/systemd-tmpfiles"].first { (candidate: String) in
        access(candidate, X_OK) == 0
    }

    /// Sets the access and modification times of `path` (not following a link) to 2020-01-01.
    static func age(_ path: String) -> Bool {
        let old = timespec(tv_sec: 1_577_836_800, tv_nsec: 0)
        let times = [old, old]
        return utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) == 0
    }

    /// The modification time of `path` (not following a link), in seconds since 1970.
    static func modified(_ path: String) -> Int? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Int(info.st_mtim.tv_sec)
    }

    @Test("the server keeps the times of its socket file and lock file fresh; systemd-tmpfiles aging the directory leaves both, and the server answers")
    func keptFresh() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/aged.sock"
            try await withEchoServer(path: path, configure: { $0.socketFileRefreshInterval = .milliseconds(50) }) { _ in
                #expect(Self.age(path) && Self.age(path + ".lock"))
                let recent = Int(Date().timeIntervalSince1970) - 3600
                let refreshed = await eventually {
                    (Self.modified(path) ?? 0) > recent && (Self.modified(path + ".lock") ?? 0) > recent
                }
                #expect(refreshed, "socket \(String(describing: Self.modified(path))), lock \(String(describing: Self.modified(path + ".lock")))")
                if let tmpfiles = Self.tmpfiles {
                    // A file left a long time ago beside them: the cleaner does remove what is old (by its modification
                    // time, `m:`), so that the two surviving it says something.
                    let left = directory + "/left-over"
                    #expect(FileManager.default.createFile(atPath: left, contents: Data("old".utf8)))
                    #expect(Self.age(left))
                    let rules = directory + "/aging.conf"
                    try "d \(directory) - - - m:1h\n".write(toFile: rules, atomically: false, encoding: .utf8)
                    #expect(Self.age(rules))
                    let cleaned = try SpawnedProcess.runSynchronously(executable: tmpfiles, arguments: ["--clean", rules])
                    #expect(cleaned.status == 0, "\(String(decoding: cleaned.output, as: UTF8.self))")
                    #expect(access(left, F_OK) != 0, "the cleaner removed the old file")
                    #expect(access(path, F_OK) == 0, "the socket file is still there")
                    #expect(access(path + ".lock", F_OK) == 0, "the lock file is still there")
                }
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "fresh")) }
                #expect(String(buffer: reply) == "fresh")
                // An administrator's chown of the socket (its status change time changes, its identity does not):
                // it is still the server's to remove when it stops (found by a review: it was left behind, as
                // another user's, and the next start refused it).
                if OtherUser.canOwnFiles { #expect(lchown(path, OtherUser.uid, OtherUser.gid) == 0) }
            }
            #expect(access(path, F_OK) != 0, "the socket file is removed when the server stops")
            #expect(access(path + ".lock", F_OK) != 0, "the lock file is removed when the server stops")
        }
    }

    @Test("a server whose socket file was removed logs once that it can no longer be reached at its path, and goes on serving its connections (found by a review: nothing told)")
    func removedSocketFileLogged() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/removed.sock"
            let log = CapturedLog()
            var configuration = ServerConfiguration(path: path)
            configuration.socketFileRefreshInterval = .milliseconds(20)
            try await withRunningServer(
                {
                    Server.framed(
                        configuration: configuration, logger: log.logger(level: .error), onServerRunning: $0,
                        makeHandler: { EchoHandler() })
                }
            ) { _ in
                try await Client.withConnection(to: path) { connection in
                    #expect(unlink(path) == 0)
                    let logged = await eventually {
                        log.entries.withLock { $0.contains { $0.message.contains("was removed or replaced") } }
                    }
                    #expect(logged, "\(log.entries.withLock { $0.map(\.message) })")
                    // More refreshes pass: the line is not repeated, and the connection made before is still served.
                    let reply = try await connection.request(ByteBuffer(string: "still here"))
                    #expect(String(buffer: reply) == "still here")
                    try await Task.sleep(for: .milliseconds(100))
                    let lines = log.entries.withLock { $0.filter { $0.message.contains("was removed or replaced") } }
                    #expect(lines.count == 1 && lines.first?.level == .error, "\(lines.map(\.message))")
                    #expect(lines.first?.metadata["path"] == "\(path)")
                }
            }
        }
    }
}
