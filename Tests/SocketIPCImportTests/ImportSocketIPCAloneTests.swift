import Foundation
import SocketIPC
import Testing

/// This target depends on the `SocketIPC` product alone and imports nothing else of the package or of SwiftNIO and
/// swift-log (with `MemberImportVisibility` on, the strictest setting): what the README shows must compile here.
@Suite("import SocketIPC alone", .timeLimit(.minutes(2)))
struct ImportSocketIPCAloneTests {
    @Test("the README's server and client compile and run with import SocketIPC alone")
    func readmeServerAndClient() async throws {
        let directory = try Self.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/app.sock"
        var logger = Logger(label: "import-alone")
        logger.logLevel = .critical
        let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
        let server = Server.framed(
            configuration: .init(path: path),
            logger: logger,
            onServerRunning: { _ in runningContinuation.yield() }
        ) {
            AsyncRequestHandler { request, connection in
                #expect(connection.peer?.userID == getuid())
                return request
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            var iterator = running.makeAsyncIterator()
            _ = await iterator.next()
            let reply = try await Client.withConnection(to: path) { connection in
                try await connection.request(ByteBuffer(string: "ping"))
            }
            #expect(String(buffer: reply) == "ping")
            server.shutdownGracefully()
            try await group.waitForAll()
        }
    }

    /// GettingStarted's daemon, compiled with `import SocketIPC` alone (RunServiceTests runs `runService`): its path
    /// and `runService()` with its default signals. Never called.
    static func gettingStartedDaemon(router: ServiceRouter) async throws {
        let path = try SocketPath.inRuntimeDirectory("kv.sock").path
        let server = Server.service(configuration: .init(path: path), router: router)
        try await server.runService()
    }

    @Test("the core's types are there: errors with codes, credentials and policies")
    func coreTypes() {
        let error = SocketIPCError(.addressInUse, "busy", path: "/tmp/x.sock")
        #expect(error.code == .addressInUse)
        let peer = PeerCredentials(processID: 1, userID: 4242, groupID: 4242)
        #expect(AuthorizationPolicy.users([4242]).allows(peer))
        #expect(!AuthorizationPolicy.users([1]).allows(peer))
        var buffer = ByteBufferAllocator().buffer(capacity: 4)
        buffer.writeString("ok")
        #expect(buffer.readableBytes == 2)
    }

    // From the DocC article "Passing descriptors", "Large payloads in shared memory": a frame rendered into a loan,
    // and a sink that reads it mapped.
    struct Frame { var byteCount: Int }
    static func render(_ frame: Frame, into bytes: UnsafeMutableRawBufferPointer) {
        for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index) }
    }
    struct FrameSink: ConnectionHandler {
        let display: @Sendable (UnsafeRawBufferPointer) -> Void
        func didReceiveMessage(_ message: MappedPayload, on connection: Connection) {
            message.withUnsafeBytes { display($0) }
        }
    }

    @Test("the shared-memory example of the docs compiles and runs with import SocketIPC alone: a loan, read mapped")
    func loanAndMappedPayload() async throws {
        let directory = try Self.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = ServerConfiguration(path: directory + "/frames.sock")
        configuration.connection.maximumDescriptorsPerMessage = 1
        var logger = Logger(label: "import-alone")
        logger.logLevel = .critical
        let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
        let (sums, sumsContinuation) = AsyncStream.makeStream(of: Int.self)
        let server = Server.framed(
            configuration: configuration,
            logger: logger,
            onServerRunning: { _ in runningContinuation.yield() }
        ) {
            FrameSink { bytes in sumsContinuation.yield(bytes.reduce(0) { $0 + Int($1) }) }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            var iterator = running.makeAsyncIterator()
            _ = await iterator.next()
            var client = ClientConfiguration()
            client.connection.maximumDescriptorsPerMessage = 1
            let frame = Frame(byteCount: 3 * 4096)
            try await Client.withConnection(to: configuration.path, configuration: client) { connection in
                var loan = try SharedMemoryLoan(capacity: frame.byteCount)
                loan.withUnsafeMutableBytes { Self.render(frame, into: $0) }
                try await connection.send(loan, count: frame.byteCount)
            }
            var received = sums.makeAsyncIterator()
            #expect(await received.next() == 3 * 4096 / 256 * (255 * 256 / 2), "the sink read every byte of the frame")
            server.shutdownGracefully()
            try await group.waitForAll()
        }
    }

    static func makeTemporaryDirectory() throws -> String {
        var template = Array("/tmp/sipc-import-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SocketIPCError(.systemCall, "mkdtemp failed")
        }
        return String(cString: result)
    }
}
