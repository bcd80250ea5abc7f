import Foundation
import NIOCore
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@testable import SocketIPCRuntime

@Suite("Server.waitUntilRunning", .timeLimit(.minutes(5)), .limitedConcurrency)
struct WaitUntilRunningTests {
    @Test("tasks waiting before run() starts, and one waiting after, return once the server accepts connections")
    func waitersReturnOnceRunning() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/wait.sock"
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
                for _ in 0..<4 {
                    group.addTask {
                        // Reported also when it fails, so that a failure surfaces at the group, not as a hang.
                        defer { readyContinuation.yield() }
                        try await server.waitUntilRunning()
                        // Returned: the socket accepts connections now.
                        let reply = try await Client.withConnection(to: path) {
                            try await $0.request(ByteBuffer(string: "up"))
                        }
                        #expect(String(buffer: reply) == "up")
                    }
                }
                group.addTask { try await server.run() }
                var readiness = ready.makeAsyncIterator()
                for _ in 0..<4 { _ = await readiness.next() }
                try await server.waitUntilRunning()  // after it runs: at once
                #expect(server.state.withLock { $0.startup.count } == 0, "no waiter is left behind")
                server.shutdownGracefully()
                try await group.waitForAll()
            }
            try await server.waitUntilRunning()  // after it stopped: it did run
        }
    }

    @Test("a server whose path is occupied makes waiters, before and after its run() failed, throw run()'s error")
    func throwsRunsError() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/occupied.sock"
            try "not a socket".write(toFile: path, atomically: false, encoding: .utf8)
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let early = Task { try await server.waitUntilRunning() }
            let runError = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(runError?.code == .pathOccupied)
            let earlyError = await #expect(throws: SocketIPCError.self) { try await early.value }
            #expect(earlyError?.code == .pathOccupied)
            let lateError = await #expect(throws: SocketIPCError.self) { try await server.waitUntilRunning() }
            #expect(lateError?.code == .pathOccupied)
        }
    }

    @Test("a server shut down before it ran makes waiters throw invalidState")
    func throwsForServerThatNeverRan() async throws {
        try await withTemporarySocketDirectory { directory in
            let server = Server.framed(configuration: .init(path: directory + "/never.sock"), logger: testLogger) {
                EchoHandler()
            }
            let early = Task { try await server.waitUntilRunning() }
            server.shutdownGracefully()
            let earlyError = await #expect(throws: SocketIPCError.self) { try await early.value }
            #expect(earlyError?.code == .invalidState)
            let lateError = await #expect(throws: SocketIPCError.self) { try await server.waitUntilRunning() }
            #expect(lateError?.code == .invalidState)
            let runError = await #expect(throws: SocketIPCError.self) { try await server.run() }
            #expect(runError?.code == .invalidState)
        }
    }

    @Test("cancelling a waiting task ends its wait with CancellationError and leaves no waiter behind")
    func cancellation() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/cancel.sock"
            let server = Server.framed(configuration: .init(path: path), logger: testLogger) { EchoHandler() }
            let waiting = Task { try await server.waitUntilRunning() }
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            #expect(server.state.withLock { $0.startup.count } == 0)
            // The server still runs, and a later waiter still learns it.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.run() }
                try await server.waitUntilRunning()
                server.shutdownGracefully()
                try await group.waitForAll()
            }
        }
    }
}
