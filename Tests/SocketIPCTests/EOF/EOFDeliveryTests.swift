import Foundation
import NIOCore
import NIOPosix
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 9, section 2: an EOF-style send reports delivery only when the server read the whole message and closed
/// cleanly; anything else is an error that says why.
@Suite("EOF-style delivery is honest", .timeLimit(.minutes(5)), .limitedConcurrency)
struct EOFDeliveryTests {
    /// The three handler forms, each with a maximum of 1000 bytes and a 2-byte acknowledgement.
    static func handler(_ kind: String) -> EOFMessageHandler {
        switch kind {
        case "collecting":
            .collecting(maximumSize: 1000) { _, _ in ByteBuffer(string: "ok") }
        case "streaming":
            .streaming { body, _ in
                _ = try await body.collect(upTo: 1000)
                return ByteBuffer(string: "ok")
            }
        default:
            .onEventLoop(maximumSize: 1000) { _, _ in ByteBuffer(string: "ok") }
        }
    }

    @Test(
        "4 MiB to a server whose maximum is 1000 bytes throws connectionClosed every time, never an acknowledgement",
        arguments: ["on the event loop", "collecting", "streaming"]
    )
    func overMaximum(kind: String) async throws {
        try await withEOFTestServer(handler: Self.handler(kind)) { _, path in
            let message = ByteBuffer(repeating: 7, count: 4 * 1024 * 1024)
            for _ in 0..<20 {
                let error = await #expect(throws: SocketIPCError.self) { _ = try await Client.sendMessage(message, to: path) }
                #expect(error?.code == .connectionClosed)
                #expect(error?.message.contains("maximum size") == true, "the message names the likely cause")
            }
            // The same through the streaming client.
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(to: path) { writer in
                    for _ in 0..<64 { try await writer.write(ByteBuffer(repeating: 7, count: 64 * 1024)) }
                }
            }
            #expect(error?.code == .connectionClosed)
            // And the server still serves a message within its maximum.
            let acknowledgement = try await Client.sendMessage(ByteBuffer(repeating: 7, count: 1000), to: path)
            #expect(String(buffer: acknowledgement) == "ok")
        }
    }

    @Test(
        "a server whose policy refuses the client makes every send throw, small or 4 MiB",
        arguments: ["on the event loop", "collecting", "streaming"]
    )
    func refusedByPolicy(kind: String) async throws {
        try await withEOFTestServer(
            handler: Self.handler(kind),
            configure: { $0.authorization = .users([UInt32.max - 1]) }
        ) { _, path in
            for size in [5, 4 * 1024 * 1024] {
                for _ in 0..<10 {
                    let error = await #expect(throws: SocketIPCError.self) {
                        _ = try await Client.sendMessage(ByteBuffer(repeating: 7, count: size), to: path)
                    }
                    #expect(error?.code == .connectionClosed)
                }
            }
        }
    }

    @Test("an EOF-style send to a framed server says it is a framed server, for small and large messages")
    func framedServer() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            for size in [5, 300 * 1024] {
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await Client.sendMessage(ByteBuffer(repeating: 0x61, count: size), to: path)
                }
                #expect(error?.code == .wrongStyle)
                #expect(error?.message.contains("framed server") == true)
                #expect(error?.message.contains("drop --eof") == true)
                #expect(error?.path == path)
            }
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(to: path) { try await $0.write(ByteBuffer(string: "hello")) }
            }
            #expect(error?.code == .wrongStyle)
            #expect(error?.message.contains("framed server") == true)
        }
    }

    @Test("a framed server that refuses the client is still named a framed server")
    func refusingFramedServer() async throws {
        try await withFramedTestServer(
            configure: { $0.authorization = .users([UInt32.max - 1]) },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
            }
            #expect(error?.message.contains("framed server") == true)
        }
    }

    @Test("a listener that accepts and closes at once fails every send with connectionClosed (300 runs)")
    func closedAtOnce() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/closer.sock"
            let listener = try ClosingListener(path: path)
            defer { listener.stop() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<300 {
                    group.addTask {
                        do {
                            let acknowledgement = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
                            Issue.record("a closed connection counted as delivery: \(acknowledgement.readableBytes) bytes")
                        } catch let error as SocketIPCError {
                            #expect(error.code == .connectionClosed || error.code == .timedOut)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}

extension EOFDeliveryTests {
    @Test(
        "a message up to 64 KiB over a maximum beyond the accepting thread's share is refused with bytes unread: the client's write fails (EPIPE) or its read does (ECONNRESET), never a clean end-of-stream after the whole message (before, NIO's pool reused a larger read buffer and the server read the excess too)",
        arguments: [1, 2, 20_000, 40_000]
    )
    func overByAFewKilobytes(excess: Int) async throws {
        let maximum = 4 << 20
        let handler = EOFMessageHandler.collecting(maximumSize: maximum) { _, _ in ByteBuffer(string: "ok") }
        try await withEOFTestServer(handler: handler) { _, path in
            let message = [UInt8](repeating: 7, count: maximum + excess)
            for _ in 0..<3 {
                let socket = try await RawSocket.connect(to: path)
                defer { socket.close() }
                // The server closes once it has seen too much. When that happens while the client still writes,
                // its write fails (EPIPE) and Linux has then spent the reset: the read after it meets a clean
                // end-of-stream (as a socketpair shows). Either failure tells the client; an acknowledgement never.
                var writeFailed = false
                do { try await socket.write(message) } catch { writeFailed = true }
                socket.shutdownWrite()
                var readFailed = false
                var acknowledgement: [UInt8] = []
                do { acknowledgement = try await socket.readToEnd() } catch { readFailed = true }
                #expect(acknowledgement.isEmpty, "an acknowledgement for a message over the maximum")
                #expect(writeFailed || readFailed, "the server read past its maximum: the whole message went and a clean end-of-stream came")
            }
        }
    }

    @Test(
        "one byte over the maximum throws, also when the message is read on an event loop",
        arguments: ["on the event loop", "collecting"]
    )
    func oneByteOver(kind: String) async throws {
        try await withEOFTestServer(handler: Self.handler(kind)) { _, path in
            for _ in 0..<50 {
                let error = await #expect(throws: SocketIPCError.self) {
                    _ = try await Client.sendMessage(ByteBuffer(repeating: 7, count: 1001), to: path)
                }
                #expect(error?.code == .connectionClosed)
            }
            // A raw client that sends the message in two writes: the server may have handed it to an event loop.
            for _ in 0..<20 {
                let socket = try await RawSocket.connect(to: path)
                defer { socket.close() }
                sendWithoutSignal(socket.descriptor, [UInt8](repeating: 7, count: 600))
                sendWithoutSignal(socket.descriptor, [UInt8](repeating: 7, count: 401))
                socket.shutdownWrite()
                await #expect(throws: RawSocketError.self) { _ = try await socket.readToEnd() }
            }
        }
    }
}
