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

/// What a server may and may not do to files at and beside its socket path when other processes, of this user or
/// another, got there first or change things while it runs.
@Suite("The socket file: never another's, never wider, never through a symbolic link", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketFileSafetyTests {
    @Test(
        "another user's live 0600 socket in a shared directory is left running; the server refuses and says why",
        .enabled(if: OtherUser.canRunProcesses && OtherUser.socat != nil, "needs root, setpriv and socat"),
        arguments: [(mode: mode_t(0o1777), optOut: false), (mode: 0o777, optOut: true)]
    )
    func othersLiveSocket(directoryMode: mode_t, optOut: Bool) async throws {
        try await withTemporarySocketDirectory { directory in
            let shared = directory + "/shared"
            try makeDirectory(shared, mode: directoryMode)
            chmod(directory, 0o755)
            let path = shared + "/victim.sock"
            try await withForeignListener(at: path) {
                let before = try #require(fileStatus(path))
                #expect(before.uid == OtherUser.uid && before.mode & 0o7777 == 0o600)
                let server = Server.framed(configuration: configuration(path) { $0.requiresSecureParentDirectory = !optOut },
                                           logger: testLogger) { EchoHandler() }
                let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
                #expect(error?.code == .addressInUse)
                #expect(error?.message.contains("left untouched") == true)
                let after = try #require(fileStatus(path))
                #expect(after.inode == before.inode && after.uid == OtherUser.uid && after.mode == before.mode)
                #expect(connects(to: path), "the other user's server still accepts connections")
                #expect(fileStatus(path + ".lock") == nil, "the refused server removed its own lock file")
            }
        }
    }

    // No time limit of its own: the suite's counts the wait for a place among the tests that run at once; the error's
    // text ("queue is full") shows it was not a timeout.
    @Test("a foreign listener with a full connection queue (listen(0)) is reported in use at once, never waited for")
    func fullQueue() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/full.sock"
            let listener = try FullQueueListener(at: path)
            defer { withExtendedLifetime(listener) {} }
            let before = try #require(fileStatus(path))
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .addressInUse)
            #expect(error?.message.contains("queue is full") == true)
            #expect(fileStatus(path)?.inode == before.inode)
        }
    }

    @Test("a stale socket that belongs to another user is left untouched", .enabled(if: OtherUser.canOwnFiles, "needs root"))
    func othersStaleSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stale.sock"
            try makeStaleSocket(at: path)
            #expect(lchown(path, OtherUser.uid, OtherUser.gid) == 0)
            let before = try #require(fileStatus(path))
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .pathOccupied)
            #expect(error?.message.contains("uid \(OtherUser.uid)") == true)
            #expect(fileStatus(path)?.inode == before.inode)
        }
    }

    @Test("a symbolic link at the socket path is refused, and its target's mode and contents do not change")
    func symlinkAtPath() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/link.sock"
            let target = directory + "/precious"
            try Data("precious".utf8).write(to: URL(fileURLWithPath: target))
            chmod(target, 0o600)
            symlink(target, path)
            let server = Server.framed(configuration: configuration(path) { $0.mode = 0o666 }, logger: testLogger) {
                EchoHandler()
            }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .pathOccupied)
            #expect(fileStatus(target)?.mode == S_IFREG | 0o600)
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious")
            #expect((fileStatus(path)?.mode ?? 0) & S_IFMT == S_IFLNK)
        }
    }

    @Test("a symbolic link, a FIFO or another user's file at the lock path is refused and left as it was",
          arguments: ["symlink", "fifo", "other user's file"])
    func occupiedLockPath(kind: String) async throws {
        if kind == "other user's file" && !OtherUser.canOwnFiles { return }
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/locked.sock"
            let lockPath = path + ".lock"
            let target = directory + "/target"
            switch kind {
            case "symlink": symlink(target, lockPath)
            case "fifo": mkfifo(lockPath, 0o600)
            default:
                try Data().write(to: URL(fileURLWithPath: lockPath))
                chown(lockPath, OtherUser.uid, OtherUser.gid)
            }
            let before = try #require(fileStatus(lockPath))
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .pathOccupied)
            #expect(error?.message.contains(lockPath) == true)
            let after = try #require(fileStatus(lockPath))
            #expect(after.inode == before.inode && after.mode == before.mode && after.uid == before.uid)
            #expect(fileStatus(target) == nil, "a symbolic link's target is never created")
            #expect(fileStatus(path) == nil)
        }
    }

    @Test(
        "a symbolic link of another user on the way to the directory is refused, even behind one of this user's; one of this user's alone is followed",
        .enabled(if: OtherUser.canOwnFiles, "needs root")
    )
    func foreignLinkOnTheWay() async throws {
        try await withTemporarySocketDirectory { directory in
            let real = directory + "/real"
            #expect(mkdir(real, 0o700) == 0)
            // The other user's link leads to this user's own directory, which passes the check: the link does not,
            // since its owner could point it at a directory of theirs once the server runs.
            let foreign = directory + "/foreign"
            #expect(symlink(real, foreign) == 0)
            #expect(lchown(foreign, OtherUser.uid, OtherUser.gid) == 0)
            let own = directory + "/own"
            #expect(symlink("foreign", own) == 0)
            for path in [foreign + "/s.sock", own + "/s.sock"] {
                let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
                let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
                #expect(error?.code == .insecureDirectory)
                #expect(error?.message.contains("symbolic link \(foreign)") == true, "\(error?.message ?? "")")
                #expect(error?.message.contains("uid \(OtherUser.uid)") == true)
                #expect(try directoryEntries(real) == [])
            }
            // A link of this user's straight to the directory is followed, as before.
            let direct = directory + "/direct"
            #expect(symlink(real, direct) == 0)
            try await withEchoServer(path: direct + "/s.sock") { _ in
                let reply = try await Client.withConnection(to: direct + "/s.sock") {
                    try await $0.request(ByteBuffer(string: "through my link"))
                }
                #expect(String(buffer: reply) == "through my link")
            }
        }
    }

    @Test(
        "a directory of another user that the path leaves through `..` is refused: in a sticky directory its owner could replace it with a link; one of this user's is fine",
        .enabled(if: OtherUser.canOwnFiles, "needs root")
    )
    func foreignDirectoryLeftThroughParent() async throws {
        try await withTemporarySocketDirectory { directory in
            let sticky = directory + "/sticky"
            #expect(mkdir(sticky, 0o700) == 0)
            #expect(chmod(sticky, 0o1777) == 0)
            let real = sticky + "/real"
            #expect(mkdir(real, 0o700) == 0)
            let theirs = sticky + "/theirs"
            #expect(mkdir(theirs, 0o755) == 0)
            #expect(chown(theirs, OtherUser.uid, OtherUser.gid) == 0)
            let path = theirs + "/../real/s.sock"
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .insecureDirectory)
            #expect(error?.message.contains("leaves the directory \(theirs) through `..`") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("uid \(OtherUser.uid)") == true)
            #expect(try directoryEntries(real) == [])

            let mine = sticky + "/mine"
            #expect(mkdir(mine, 0o700) == 0)
            try await withEchoServer(path: mine + "/../real/s.sock") { _ in
                let reply = try await Client.withConnection(to: real + "/s.sock") {
                    try await $0.request(ByteBuffer(string: "through .."))
                }
                #expect(String(buffer: reply) == "through ..")
            }
        }
    }

    @Test("a lock file of this user that others may open: held by another, the error says so; free, the server takes it and makes it 0600")
    func lockFileOthersMayOpen() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/open.sock"
            let lockPath = path + ".lock"
            let made = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            #expect(made >= 0)
            #expect(fchmod(made, 0o644) == 0)
            // Another holder of a shared lock, as another user with read access could be.
            let holder = open(lockPath, O_RDONLY | O_CLOEXEC)
            #expect(flock(holder, LOCK_SH) == 0)
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .addressInUse)
            #expect(error?.message.contains("lets other users open it") == true, "\(error?.message ?? "")")
            close(holder)
            close(made)
            // A process another test spawns meanwhile holds copies of the descriptors until it executes its program
            // (a loaded CI run's server found the lock still held): wait, bounded, until the lock is free.
            let probe = open(lockPath, O_RDONLY | O_CLOEXEC)
            for _ in 0..<1000 where flock(probe, LOCK_EX | LOCK_NB) != 0 { try await Task.sleep(for: .milliseconds(10)) }
            close(probe)
            try await withEchoServer(path: path) { _ in
                #expect(fileStatus(lockPath).map { $0.mode & 0o777 } == 0o600)
            }
        }
    }

    @Test("a hard link to another file of this user at the lock path is refused, and that file is not written")
    func hardLinkAtLockPath() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/linked.sock"
            let target = directory + "/config"
            try Data("precious".utf8).write(to: URL(fileURLWithPath: target))
            #expect(link(target, path + ".lock") == 0)
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let error = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(error?.code == .pathOccupied)
            #expect(error?.message.contains("hard links") == true)
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious")
            #expect(fileStatus(path) == nil)
        }
    }

    @Test("the socket has exactly the configured mode, and the private directory it was bound in is gone",
          arguments: [UInt16(0o600), 0o640, 0o660, 0o666, 0o700])
    func exactMode(mode: UInt16) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/exact.sock"
            try await withEchoServer(path: path, configure: { $0.mode = mode }) { _ in
                let status = try #require(fileStatus(path))
                #expect(status.mode == S_IFSOCK | mode_t(mode))
                #expect(status.uid == geteuid())
                #expect(try directoryEntries(directory) == ["exact.sock", "exact.sock.lock"])
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "hi")) }
                #expect(String(buffer: reply) == "hi")
            }
            #expect(try directoryEntries(directory) == [])
        }
    }

    @Test("a refused start leaves nothing of its own behind")
    func refusedStartLeavesNothing() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/busy.sock"
            let descriptor = try makeStaleSocket(at: path, listening: true)
            defer { close(descriptor) }
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(try directoryEntries(directory) == ["busy.sock"])
        }
    }

    @Test("an exiting server leaves alone the lock file and socket of a successor that took the path over")
    func successorSurvives() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/handover.sock"
            let (running, isRunning) = AsyncStream.makeStream(of: Void.self)
            let first = Server.framed(
                configuration: .init(path: path), logger: testLogger, onServerRunning: { _ in isRunning.yield() }
            ) { EchoHandler() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    defer { isRunning.finish() }
                    try await first.run()
                }
                for await _ in running { break }
                // A clean-up job removes both files while the first server runs; a successor then takes the path.
                unlink(path)
                unlink(path + ".lock")
                try await withEchoServer(path: path) { _ in
                    let socket = try #require(fileStatus(path))
                    let lock = try #require(fileStatus(path + ".lock"))
                    first.shutdownGracefully()
                    try await group.waitForAll()
                    #expect(fileStatus(path)?.inode == socket.inode, "the successor's socket survives")
                    #expect(fileStatus(path + ".lock")?.inode == lock.inode, "the successor's lock file survives")
                    let reply = try await Client.withConnection(to: path) {
                        try await $0.request(ByteBuffer(string: "successor"))
                    }
                    #expect(String(buffer: reply) == "successor")
                    let third = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
                    let error = await #expect(throws: SocketIPCError.self) { try await third.run() }
                    #expect(error?.code == .addressInUse)
                    #expect(error?.message.contains("lock file") == true)
                }
            }
            #expect(try directoryEntries(directory) == [])
        }
    }
}

/// A configuration for `path`, changed by `change`.
func configuration(_ path: String, _ change: (inout ServerConfiguration) -> Void = { _ in }) -> ServerConfiguration {
    var configuration = ServerConfiguration(path: path)
    change(&configuration)
    return configuration
}
