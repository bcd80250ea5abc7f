import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

@Suite("Socket paths", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SocketPathTests {
    @Test("the limit is sun_path less its NUL")
    func limit() {
        #if os(Linux)
        #expect(SocketPath.maximumLength == 107)
        #else
        #expect(SocketPath.maximumLength == 103)
        #endif
    }

    @Test("a path of exactly the limit works end to end; one byte more fails before any system call")
    func limitEndToEnd() async throws {
        try await withTemporarySocketDirectory { directory in
            let filler = SocketPath.maximumLength - directory.utf8.count - 1
            let longest = directory + "/" + String(repeating: "s", count: filler)
            #expect(longest.utf8.count == SocketPath.maximumLength)
            try await withEchoServer(path: longest) { _ in
                let reply = try await Client.withConnection(to: longest) { try await $0.request(ByteBuffer(string: "ok")) }
                #expect(String(buffer: reply) == "ok")
            }

            let tooLong = longest + "x"
            let error = try #require(throws: SocketIPCError.self) { try SocketPath(tooLong) }
            #expect(error.code == .invalidPath)
            #expect(error.message.contains("\(SocketPath.maximumLength + 1) bytes"))
            #expect(error.message.contains("limit is \(SocketPath.maximumLength)"))
            let server = Server.framed(configuration: .init(path: tooLong), logger: testLogger) { EchoHandler() }
            await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(fileStatus(tooLong) == nil)
            await #expect(throws: SocketIPCError.self) { _ = try await Client.connect(to: tooLong) }
        }
    }

    @Test("empty paths and NUL bytes are refused", arguments: ["", "/tmp/a\0b"])
    func invalid(path: String) {
        #expect(throws: SocketIPCError.self) { try SocketPath(path) }
    }
}
