import Foundation
import SocketIPC
import SocketIPCTesting
import Testing
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `Server.runService()`: a daemon's `main` in one line, which runs the server until a signal and then shuts it down
/// gracefully (found by a review of the docs as a new user: a daemon written from them died on SIGTERM and left its
/// socket and lock files behind).
@Suite("Running a server until a signal", .timeLimit(.minutes(1)), .serialized)
struct RunServiceTests {
    @Test("runService serves until one of its signals arrives, then shuts down gracefully: a call in progress is answered, and the socket file is removed")
    func runsUntilSignal() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/daemon.sock"
            let server = Server.framed(configuration: ServerConfiguration(path: path)) { EchoHandler() }
            // SIGUSR2, not SIGTERM: the signal goes to the whole test process, whose other tests must not see it.
            let running = Task { try await server.runService(gracefulShutdownSignals: [.sigusr2]) }
            try await server.waitUntilRunning()
            let reply = try await Client.withConnection(to: path) { connection in
                try await connection.request(ByteBuffer(string: "before"))
            }
            #expect(String(buffer: reply) == "before")
            kill(getpid(), SIGUSR2)
            try await running.value
            #expect(!FileManager.default.fileExists(atPath: path), "the socket file is removed")
            #expect(!FileManager.default.fileExists(atPath: path + ".lock"), "the lock file is removed")
        }
    }
}
