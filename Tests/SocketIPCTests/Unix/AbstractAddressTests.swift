import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

/// Issue 13, section 2: `@name` is an address in Linux's abstract namespace: no file, served and reached like a path,
/// refused with a mode or with a policy that admits everyone unless that is said explicitly.
@Suite("Abstract socket addresses (@name)", .timeLimit(.minutes(5)), .limitedConcurrency)
struct AbstractAddressTests {
    /// A name no other test or run uses.
    static func uniqueName() -> String { "@socketipc-test-\(getpid())-\(UUID().uuidString.prefix(8))" }

    #if os(Linux)
    @Test("a framed server on @name answers requests and creates no file; its address shows in /proc/net/unix")
    func servesWithoutFile() async throws {
        let name = Self.uniqueName()
        let directory = FileManager.default.currentDirectoryPath
        try await withEchoServer(path: name) { _ in
            let reply = try await Client.withConnection(to: name) { try await $0.request(ByteBuffer(string: "hi")) }
            #expect(String(buffer: reply) == "hi")
            #expect(!FileManager.default.fileExists(atPath: directory + "/" + name), "no file called \(name)")
            // FileHandle reads to the end (String(contentsOfFile:) stops after one read of a /proc file, about 4 KiB).
            let handle = try #require(FileHandle(forReadingAtPath: "/proc/net/unix"))
            defer { try? handle.close() }
            let table = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
            #expect(table.contains(" " + name + "\n"), "the kernel lists the abstract address")
        }
    }

    @Test("a second server on the same @name fails with addressInUse; the first keeps serving")
    func addressInUse() async throws {
        let name = Self.uniqueName()
        try await withEchoServer(path: name) { _ in
            let error = await #expect(throws: SocketIPCError.self) {
                try await withEchoServer(path: name) { _ in }
            }
            #expect(error?.code == .addressInUse)
            let reply = try await Client.withConnection(to: name) { try await $0.request(ByteBuffer(string: "still")) }
            #expect(String(buffer: reply) == "still")
        }
    }

    @Test("a file mode or a parent directory to create on @name is an error: there is no file")
    func fileOptionsRefused() async throws {
        for configure in [
            { (configuration: inout ServerConfiguration) in configuration.mode = 0o666 },
            { (configuration: inout ServerConfiguration) in configuration.createParentDirectory = true },
        ] {
            let error = await #expect(throws: SocketIPCError.self) {
                try await withEchoServer(path: Self.uniqueName(), configure: configure) { _ in }
            }
            #expect(error?.code == .invalidConfiguration)
            #expect(error?.message.contains("abstract socket address") == true, "\(String(describing: error))")
        }
    }

    @Test("a policy that admits everyone is refused on @name unless allowsAnyoneOnAbstractAddress says so")
    func openPolicyNeedsConsent() async throws {
        for policy in [AuthorizationPolicy.anyone, .sameUser || .anyone] {
            let error = await #expect(throws: SocketIPCError.self) {
                try await withEchoServer(path: Self.uniqueName(), configure: { $0.authorization = policy }) { _ in }
            }
            #expect(error?.code == .invalidConfiguration)
            #expect(error?.message.contains("CVE-2020-15257") == true)
        }
        let name = Self.uniqueName()
        try await withEchoServer(
            path: name,
            configure: {
                $0.authorization = .anyone
                $0.allowsAnyoneOnAbstractAddress = true
            }
        ) { _ in
            let reply = try await Client.withConnection(to: name) { try await $0.request(ByteBuffer(string: "ok")) }
            #expect(String(buffer: reply) == "ok")
        }
    }

    @Test("a client of an @name nobody listens on gets connectionRefused naming it")
    func nobodyListening() async throws {
        let name = Self.uniqueName()
        let error = await #expect(throws: SocketIPCError.self) {
            try await Client.withConnection(to: name) { _ in }
        }
        #expect(error?.code == .connectionRefused)
        #expect(error?.message.contains(name) == true)
    }

    @Test("an EOF-style server on @name acknowledges a message")
    func eofStyle() async throws {
        let name = Self.uniqueName()
        let makeServer = { (onRunning: @escaping @Sendable (SocketPath) async -> Void) in
            Server.eof(
                configuration: ServerConfiguration(path: name),
                logger: testLogger,
                onServerRunning: onRunning,
                handler: .onEventLoop { message, _ in ByteBuffer(string: "got \(message.readableBytes)") }
            )
        }
        try await withRunningServer(makeServer) { _ in
            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: name)
            #expect(String(buffer: acknowledgement) == "got 5")
        }
    }
    #endif

    @Test("@ alone and a name over the sun_path limit are invalid; 107 bytes of name fit", arguments: [0, 107, 108])
    func nameLength(length: Int) throws {
        let path = "@" + String(repeating: "n", count: length)
        #if os(Linux)
        if (1...SocketPath.maximumLength).contains(length) {
            #expect(try SocketPath(path).isAbstract)
        } else {
            #expect(throws: SocketIPCError.self) { try SocketPath(path) }
        }
        #else
        #expect(throws: SocketIPCError.self) { try SocketPath(path) }
        #endif
    }
}
