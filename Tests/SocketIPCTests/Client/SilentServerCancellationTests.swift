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

/// A client waiting for a server that accepted its connection and says nothing: cancelling the task ends the wait.
@Suite("A client cancelled while a silent server keeps it waiting", .timeLimit(.minutes(5)), .limitedConcurrency)
struct SilentServerCancellationTests {
    @Test("cancelling a connect that waits for the hello throws CancellationError, not the connect timeout's timedOut")
    func cancelledConnect() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            var configuration = ClientConfiguration()
            configuration.connectTimeout = .seconds(120)
            let connecting = Task { try await Client.connect(to: path, configuration: configuration) }
            // The connection is in the listener's queue once accept returns it: the client waits for the hello.
            let accepted = try await acceptConnection(on: listener)
            defer { close(accepted) }
            connecting.cancel()
            let error = await #expect(throws: (any Error).self) { try await connecting.value }
            #expect(error is CancellationError, "\(String(describing: error))")
        }
    }

    @Test("withConnection whose request timed out against a server that reads nothing returns with timedOut, without waiting for its queue to drain")
    func timedOutBodyDoesNotWaitForTheQueue() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/unread.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            // Hello, then nothing: never a read, never an answer.
            let serving = Task {
                try await onOwnThread { () -> Int32 in
                    let accepted = try acceptConnectionNow(on: listener)
                    let hello = serverHelloBytes
                    _ = hello.withUnsafeBytes { send(accepted, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    return accepted
                }
            }
            var configuration = ClientConfiguration()
            // Waiting for the queue would take this long: the test's time limit would end it first.
            configuration.connection.closeTimeout = .seconds(3600)
            // A send buffer far below the message (Linux doubles the 64 KiB asked for), whatever the system's
            // defaults: with the library's 1 MiB (2 MiB counted) all of it went to the kernel, nothing was left to
            // wait for, and the test passed without the fix.
            configuration.connection.socketSendBufferSize = 64 * 1024
            let error = await #expect(throws: SocketIPCError.self) {
                try await Client.withConnection(to: path, configuration: configuration) { connection in
                    // More than the socket takes, less than the write watermarks: the send returns, and the channel
                    // holds the rest; then a small message, which stays in the connection's queue behind it.
                    try await connection.send(ByteBuffer(repeating: 0x61, count: 1024 * 1024))
                    try await connection.send(ByteBuffer(repeating: 0x62, count: 1024))
                    return try await connection.request(ByteBuffer(string: "anyone?"), timeout: .milliseconds(200))
                }
            }
            #expect(error?.code == .timedOut)
            close(try await serving.value)
        }
    }
}
