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
            let accepted = try await onOwnThread { () -> Int32 in
                let accepted = accept(listener, nil, nil)
                guard accepted >= 0 else { throw RawSocketError.failed("accept", errno) }
                return accepted
            }
            defer { close(accepted) }
            connecting.cancel()
            let error = await #expect(throws: (any Error).self) { try await connecting.value }
            #expect(error is CancellationError, "\(String(describing: error))")
        }
    }
}
