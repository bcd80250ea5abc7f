#if os(Linux)
import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// swift-system's descriptor (NIOCore has a protocol of the same name).
private typealias FileDescriptor = SystemPackage.FileDescriptor

/// Honest senders of descriptors wait for room among those queued to send, however many send at once, on one
/// connection or on several of one peer's user, and whether they send messages or requests: only a peer that leaves
/// what it asked for unread is closed (found by a review: eight tasks each sending 253 descriptors to a reader that
/// kept up closed their own connection at once, as did 100 requests of 64 descriptors each, and the fifth connection
/// to one server).
@Suite("Outgoing descriptors: senders wait", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct OutgoingDescriptorWaitTests {
    /// Closes what each message brings after a pause of `pause` microseconds (a reader slower than its senders);
    /// answers each request with its payload and the first descriptor it brought.
    struct SlowSink: ConnectionHandler {
        let received: Counter
        let pause: Int

        func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
            descriptors.close()
            var pause = timespec(tv_sec: 0, tv_nsec: self.pause * 1000)
            nanosleep(&pause, nil)
            self.received.add()
        }

        func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
            reply.succeed(request)
        }

        func didReceiveRequest(_ request: ByteBuffer, descriptors: ReceivedDescriptors, reply: Reply, on connection: Connection) {
            let files = descriptors.take()
            defer { for file in files { try? file.close() } }
            reply.succeed(request, descriptors: Array(files.prefix(1)))
        }
    }

    final class Counter: Sendable {
        private let value = Atomic(0)
        func add() { self.value.add(1, ordering: .relaxed) }
        var count: Int { self.value.load(ordering: .relaxed) }
    }

    static func options(_ maximum: Int) -> ConnectionOptions {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = maximum
        return options
    }

    /// Runs `tasks` tasks, each calling `body` `times` times; returns the errors they threw.
    static func runConcurrently(
        tasks: Int,
        times: Int,
        _ body: @escaping @Sendable () async throws -> Void
    ) async -> [String] {
        await withTaskGroup(of: String?.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for time in 0..<times {
                        do { try await body() } catch { return "task \(task), send \(time): \(error)" }
                    }
                    return nil
                }
            }
            var failures: [String] = []
            for await failure in group { if let failure { failures.append(failure) } }
            return failures
        }
    }

    @Test("eight tasks each sending messages of 253 descriptors on one connection all get through")
    func concurrentSenders() async throws {
        let received = Counter()
        let null = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? null.close() }
        let files = [FileDescriptor](repeating: null, count: 253)
        var configuration = ClientConfiguration()
        configuration.connection = Self.options(253)
        let failures = try await withFramedTestServer(
            configure: { $0.connection = Self.options(253) },
            makeHandler: { SlowSink(received: received, pause: 300) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                let failures = await Self.runConcurrently(tasks: 8, times: 30) {
                    try await connection.send(ByteBuffer(string: "x"), descriptors: files)
                }
                // A request answered: every message before it has been read.
                _ = try await connection.request(ByteBuffer(string: "done"))
                return failures
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(received.count == 240)
    }

    @Test("100 requests of 64 descriptors each at once get their replies")
    func concurrentRequests() async throws {
        let null = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? null.close() }
        let files = [FileDescriptor](repeating: null, count: 64)
        var configuration = ClientConfiguration()
        configuration.connection = Self.options(64)
        let failures = try await withFramedTestServer(
            configure: { $0.connection = Self.options(64) },
            makeHandler: { SlowSink(received: Counter(), pause: 0) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                await Self.runConcurrently(tasks: 100, times: 1) {
                    let (_, descriptors) = try await connection.request(ByteBuffer(string: "x"), descriptors: files)
                    let count = descriptors.take().map { try? $0.close() }.count
                    guard count == 1 else { throw SocketIPCError(.invalidMessage, "\(count) descriptors came back") }
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
    }

    @Test("five connections of one user to a slow reader all get through, waiting for the user's room")
    func fiveConnections() async throws {
        let received = Counter()
        let null = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? null.close() }
        let files = [FileDescriptor](repeating: null, count: 4)
        var settings = ClientConfiguration()
        settings.connection = Self.options(4)
        let configuration = settings
        let failures = try await withFramedTestServer(
            configure: { $0.connection = Self.options(4) },
            makeHandler: { SlowSink(received: received, pause: 500) }
        ) { _, path in
            await Self.runConcurrently(tasks: 5, times: 1) {
                try await Client.withConnection(to: path, configuration: configuration) { connection in
                    for _ in 0..<700 { try await connection.send(ByteBuffer(string: "x"), descriptors: files) }
                    _ = try await connection.request(ByteBuffer(string: "done"))
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(received.count == 3500)
    }
}
#endif
