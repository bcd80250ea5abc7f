import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import SystemPackage
import Testing

/// While a connection reads nothing more for `maximumConcurrentRequests`, replies still get through, so that a
/// handler that waits for the peer's reply to answer is not stuck; replies that carry descriptors too.
extension DescriptorPassingTests {
    @Test("a server paused at maximumConcurrentRequests still gets a reply that carries descriptors, which its handler awaits")
    func replyWithDescriptorsWhilePaused() async throws {
        try await withTemporarySocketDirectory { directory in
            let file = directory + "/answer.txt"
            try "from the client's file".write(toFile: file, atomically: true, encoding: .utf8)
            try await withFramedTestServer(
                configure: {
                    $0.connection = Self.options()
                    $0.connection.maximumConcurrentRequests = 1
                },
                makeHandler: { AskingBackHandler() }
            ) { _, path in
                try await Client.withConnection(
                    to: path,
                    configuration: Self.clientConfiguration(),
                    handler: FileGivingHandler(path: file)
                ) { connection in
                    // The server answers only once the client's reply, with its file, came back: it is paused meanwhile.
                    let reply = try await connection.request(ByteBuffer(string: "read my file"), timeout: .seconds(30))
                    #expect(String(buffer: reply) == "from the client's file")
                }
            }
        }
    }
}

/// Answers each request with the text of the file the peer passes back when asked.
private struct AskingBackHandler: ConnectionHandler {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.complete {
            let (_, descriptors) = try await connection.request(
                ByteBuffer(string: "your file?"), descriptors: [], timeout: .seconds(30)
            )
            var text = ""
            for descriptor in descriptors.take() {
                text += try readAll(descriptor)
                try descriptor.close()
            }
            return ByteBuffer(string: text)
        }
    }
}

/// Answers each request with the file at `path`, passed.
private struct FileGivingHandler: ConnectionHandler {
    let path: String

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        guard let file = try? SystemPackage.FileDescriptor.open(self.path, .readOnly) else {
            reply.fail(SocketIPCError(.remoteError, "cannot open \(self.path)"))
            return
        }
        defer { try? file.close() }
        reply.succeed(ByteBuffer(), descriptors: [file])
    }
}
