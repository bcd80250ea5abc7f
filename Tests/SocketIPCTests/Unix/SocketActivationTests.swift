import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 13, section 1: a server adopts a listening socket it inherited (systemd's socket activation) and never
/// touches its file; `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` are read as `sd_listen_fds_with_names(3)` reads
/// them. (The end-to-end run under `systemd-socket-activate`, which also checks that the variables are removed from the
/// environment, is in the CLI tests: a test here must not change the environment of a process whose other threads
/// start processes.)
@Suite("Socket activation", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketActivationTests {
    @Test("LISTEN_FDS for this pid gives descriptors 3... with their LISTEN_FDNAMES, or `unknown` without them")
    func parsesVariables() throws {
        let named = try SocketActivation.sockets(pid: "42", count: "2", names: "api:admin", me: 42)
        #expect(named == [InheritedSocket(descriptor: 3, name: "api"), InheritedSocket(descriptor: 4, name: "admin")])
        let unnamed = try SocketActivation.sockets(pid: "42", count: "1", names: nil, me: 42)
        #expect(unnamed == [InheritedSocket(descriptor: 3, name: "unknown")])
        #expect(try SocketActivation.sockets(pid: "42", count: "0", names: nil, me: 42).isEmpty)
    }

    @Test("variables for another process, or without LISTEN_PID or LISTEN_FDS, pass nothing")
    func notForThisProcess() throws {
        #expect(try SocketActivation.sockets(pid: "41", count: "1", names: nil, me: 42).isEmpty)
        #expect(try SocketActivation.sockets(pid: nil, count: "1", names: nil, me: 42).isEmpty)
        #expect(try SocketActivation.sockets(pid: "42", count: nil, names: nil, me: 42).isEmpty)
    }

    @Test("a LISTEN_FDS that is not a count, or names that do not match it, are invalidConfiguration")
    func invalidVariables() {
        // 2 000 000 000: more than a process can have open, refused before anything is made for each.
        for (count, names) in [("x", nil), ("-1", nil), ("2", "one"), ("1", "a:b"), ("2000000000", nil)]
            as [(String, String?)]
        {
            #expect(throws: SocketIPCError.self, "\(count) \(names ?? "nil")") {
                try SocketActivation.sockets(pid: "42", count: count, names: names, me: 42)
            }
        }
    }

    @Test("a LISTEN_FDS that counts a descriptor that is not open is invalidConfiguration naming it, as sd_listen_fds(3) fails with EBADF")
    func countsClosedDescriptor() throws {
        // The test process has far fewer than 5,000 descriptors open: some descriptor from 3 on is closed.
        let error = #expect(throws: SocketIPCError.self) {
            try SocketActivation.sockets(pid: "42", count: "5000", names: nil, me: 42)
        }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains("is not open") == true, "\(String(describing: error))")
    }

    @Test("a server on an inherited socket serves it, leaves its file, and does not shut it down when it stops")
    func servesInheritedSocket() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            let listener = listeningSocket(at: path)
            defer { closeDescriptor(listener) }
            chmod(path, 0o640)
            // The server closes the descriptor it is given; the test keeps the original, as systemd keeps its own.
            let inherited = InheritedSocket(descriptor: dup(listener), name: "api")
            #expect(inherited.address == path)
            let configuration = ServerConfiguration(inheritedSocket: inherited)
            #expect(configuration.path == path)
            try await withRunningServer({
                Server.framed(configuration: configuration, logger: testLogger, onServerRunning: $0) { EchoHandler() }
            }) { _ in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "on")) }
                #expect(String(buffer: reply) == "on")
            }
            // The file is as it was (not removed, mode unchanged, no lock file) and the socket still listens.
            #expect(fileMode(path) == 0o640)
            #expect(!FileManager.default.fileExists(atPath: path + ".lock"))
            let probe = makeUnixStreamSocket()
            defer { closeDescriptor(probe) }
            #expect(connectUnixSocket(probe, to: path) == 0, "the listening socket was not shut down: errno \(errno)")
            // Non-blocking from then on: a connection that another holder of the socket takes between the server's
            // poll and its accept makes that accept fail with EAGAIN, instead of blocking until the next one (and
            // keeping the server from stopping).
            #expect(fcntl(listener, F_GETFL) & O_NONBLOCK != 0)
        }
    }

    @Test("a server that takes descriptors, after one that did not on the same inherited socket, gets them")
    func descriptorsAfterAnotherServer() async throws {
        // The first server turns descriptor passing off on the socket (SO_PASSRIGHTS), which the manager keeps; the
        // second, which takes descriptors, turns it on for each peer it admits.
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            let listener = listeningSocket(at: path)
            defer { closeDescriptor(listener) }
            try await withRunningServer({
                Server.framed(
                    configuration: ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(listener))),
                    logger: testLogger,
                    onServerRunning: $0
                ) { EchoHandler() }
            }) { _ in
                let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "one")) }
                #expect(String(buffer: reply) == "one")
            }
            var options = ConnectionOptions()
            options.maximumDescriptorsPerMessage = 4
            var configuration = ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(listener)))
            configuration.connection = options
            try await withRunningServer({
                Server.framed(configuration: configuration, logger: testLogger, onServerRunning: $0) { EchoHandler() }
            }) { _ in
                var client = ClientConfiguration()
                client.connection = options
                var ends: [Int32] = [-1, -1]
                #expect(pipe(&ends) == 0)
                defer { for end in ends { closeDescriptor(end) } }
                let reply = try await Client.withConnection(to: path, configuration: client) { connection in
                    try await connection.request(
                        ByteBuffer(string: "two"),
                        descriptors: [SystemPackage.FileDescriptor(rawValue: ends[1])]
                    )
                }
                #expect(String(buffer: reply.payload) == "two")
            }
        }
    }

    @Test(
        "a listening socket shut down under the server ends run(): it shuts down and throws accept's error",
        arguments: [Int32(SHUT_RDWR), Int32(SHUT_RD)]
    )
    func listenerShutDownUnderServer(how: Int32) async throws {
        // Go's http.Server.Serve returns its listener's error; a server that went on "running" without accepting
        // would be invisible to its supervisor.
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            let listener = listeningSocket(at: path)
            defer { closeDescriptor(listener) }
            let configuration = ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(listener)))
            let server = Server.framed(configuration: configuration, logger: testLogger) { EchoHandler() }
            let running = Task { try await server.run() }
            try await server.waitUntilRunning()
            let reply = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "on")) }
            #expect(String(buffer: reply) == "on")
            // Another holder of the socket (systemd's copy, here the test's) shuts it down: accept fails for good.
            // Its reading side alone (SHUT_RD) leaves it readable for ever without POLLHUP.
            shutdown(listener, how)
            let error = await #expect(throws: SocketIPCError.self) { try await running.value }
            #expect(error?.code == .systemCall)
            #expect(error?.message.contains("accept") == true, "\(String(describing: error))")
        }
    }

    @Test(
        "a listening socket with SO_PASSCRED and SO_PASSPIDFD (systemd's PassCredentials=) passes descriptors: each read's credentials leave room for them",
        .enabled(if: runsOnLinux, "SO_PASSCRED is Linux's")
    )
    func passCredentialsListener() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            let listener = listeningSocket(at: path)
            defer { closeDescriptor(listener) }
            var on: Int32 = 1
            #expect(setsockopt(listener, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0)
            // SO_PASSPIDFD (76, Linux 6.5 and later): where the kernel has it, each read brings a pidfd too.
            _ = setsockopt(listener, SOL_SOCKET, 76, &on, socklen_t(MemoryLayout<Int32>.size))
            var options = ConnectionOptions()
            options.maximumDescriptorsPerMessage = 1
            var configuration = ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(listener)))
            configuration.connection = options
            let server = Server.framed(configuration: configuration, logger: testLogger) { EchoHandler() }
            let running = Task { try await server.run() }
            defer { server.shutdownGracefully() }
            try await server.waitUntilRunning()
            var client = ClientConfiguration()
            client.connection = options
            let file = open(directory + "/passed", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            defer { closeDescriptor(file) }
            // Before, with room for the maximum only (one descriptor), the credentials took it: every read was cut
            // (MSG_CTRUNC) and the connection closed as a protocol violation.
            let replies = try await Client.withConnection(to: path, configuration: client) { connection in
                var replies: [String] = []
                for round in 0..<3 {
                    let (payload, _) = try await connection.request(
                        ByteBuffer(string: "file \(round)"),
                        descriptors: [FileDescriptor(rawValue: file)]
                    )
                    replies.append(String(buffer: payload))
                }
                replies.append(String(buffer: try await connection.request(ByteBuffer(string: "none"))))
                return replies
            }
            #expect(replies == ["file 0", "file 1", "file 2", "none"])
            server.shutdownGracefully()
            try await running.value
        }
    }

    @Test("an inherited descriptor that is not a listening Unix stream socket is refused with invalidConfiguration")
    func refusesNonListeners() async throws {
        try await withTemporarySocketDirectory { directory in
            let file = open(directory + "/plain", O_CREAT | O_RDWR, 0o600)
            let unbound = makeUnixStreamSocket()
            defer {
                closeDescriptor(file)
                closeDescriptor(unbound)
            }
            for (descriptor, expected) in [(file, "not a socket"), (unbound, "does not listen")] {
                // A server that refuses the descriptor leaves it to its owner, which closes it.
                let copy = dup(descriptor)
                defer { closeDescriptor(copy) }
                let configuration = ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: copy))
                let error = await #expect(throws: SocketIPCError.self) {
                    try await withRunningServer({
                        Server.framed(configuration: configuration, logger: testLogger, onServerRunning: $0) { EchoHandler() }
                    }) { _ in }
                }
                #expect(error?.code == .invalidConfiguration)
                #expect(error?.message.contains(expected) == true, "\(String(describing: error))")
            }
        }
    }
}

/// A Unix stream socket bound at `path` and listening, as systemd would pass it; the caller closes it.
private func listeningSocket(at path: String) -> Int32 {
    let listener = makeUnixStreamSocket()
    #expect(withSocketAddress(path, { bind(listener, $0, $1) }) == 0)
    #expect(listen(listener, 16) == 0)
    return listener
}

/// The permission bits of `path`, or `nil` when it does not exist.
private func fileMode(_ path: String) -> UInt32? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return UInt32(status.st_mode) & 0o7777
}
