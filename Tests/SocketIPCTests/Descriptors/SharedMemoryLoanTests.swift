import Foundation
import Synchronization
import NIOCore
import SocketIPC
import SocketIPCTesting
import Testing

/// Large payloads without copies: a sender fills a `SharedMemoryLoan` in place, and a receiver asks for the mapped
/// form (`MappedPayload`). In the serialized descriptor suite, so that counting this process's loans in
/// `/proc/self/fd` and `/proc/self/maps` sees only the test's own.
extension DescriptorPassingTests {
    /// `count` bytes that differ at every offset of a page, so that a misplaced page would show.
    static func pattern(_ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 % 4099) &* 31) }
    }

    /// A loan of `capacity` bytes whose first `count` bytes are ``pattern(_:)``.
    static func filledLoan(capacity: Int, count: Int) throws -> SharedMemoryLoan {
        var loan = try SharedMemoryLoan(capacity: capacity)
        let bytes = Self.pattern(count)
        loan.withUnsafeMutableBytes { buffer in
            bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        }
        return loan
    }

    /// How many descriptors and how many mappings of this process are a loan's memory (`memfd:socketipc-loan`) or a
    /// shared payload's (`memfd:socketipc-payload`).
    static func sharedMemoryInUse() -> (descriptors: Int, mappings: Int) {
        let isShared = { (text: String) in text.contains("memfd:socketipc-loan") || text.contains("memfd:socketipc-payload") }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        let descriptors = entries.filter {
            isShared((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)) ?? "")
        }.count
        let maps = readToEnd("/proc/self/maps")
        let mappings = maps.split(separator: "\n").filter { isShared(String($0)) }.count
        return (descriptors, mappings)
    }

    /// ``sharedMemoryInUse()`` once it is `expected`, or after 10 s: a sender's relay closes its copy of a passed
    /// descriptor just after `sendmsg`, which may be a moment after the receiver has the message.
    static func sharedMemoryInUse(settlingAt expected: (Int, Int)) async -> (descriptors: Int, mappings: Int) {
        let deadline = ContinuousClock.now + .seconds(10)
        var current = Self.sharedMemoryInUse()
        while current != expected, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
            current = Self.sharedMemoryInUse()
        }
        return current
    }

    @Test("a loan filled in place reaches a handler that asks for the mapped form: the bytes, mapped, and unmapped once dropped")
    func loanToMappedHandler() async throws {
        let (received, continuation) = AsyncStream.makeStream(of: MappedPayload.self)
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { MappingHandler(messages: continuation) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                // Only part of the loan is sent: the receiver sees exactly that many bytes.
                let count = 1024 * 1024 + 7
                try await connection.send(Self.filledLoan(capacity: 2 * 1024 * 1024, count: count), count: count)
                var messages = received.makeAsyncIterator()
                do {
                    let mapped = try #require(await messages.next())
                    #expect(mapped.count == count)
                    #expect(Array(mapped) == Self.pattern(count), "the bytes arrived whole")
                    #expect(mapped.withUnsafeBytes { $0.count } == count)
                    #expect(
                        await Self.sharedMemoryInUse(settlingAt: (0, 1)) == (0, 1),
                        "the payload is mapped; no descriptor is left open"
                    )
                }
                #expect(Self.sharedMemoryInUse().mappings == 0, "dropping the payload unmaps it")
            }
        }
    }

    @Test("a loan reaches a handler without the mapped form as an ordinary buffer; an empty loan as an empty message")
    func loanToOrdinaryHandler() async throws {
        let (received, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { MessageRecordingHandler(messages: continuation) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                var messages = received.makeAsyncIterator()
                try await connection.send(Self.filledLoan(capacity: 300_000, count: 300_000), count: 300_000)
                let message = try #require(await messages.next())
                #expect(Array(message.readableBytesView) == Self.pattern(300_000))
                try await connection.send(SharedMemoryLoan(capacity: 0), count: 0)
                let empty = try #require(await messages.next())
                #expect(empty.readableBytes == 0)
            }
        }
        #expect(await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0), "nothing of either loan is left open or mapped")
    }

    @Test("on a connection without descriptor passing, a loan's bytes go through the socket")
    func loanWithoutDescriptorPassing() async throws {
        let (received, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        try await withFramedTestServer(makeHandler: { MessageRecordingHandler(messages: continuation) }) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                #expect(!connection.passesDescriptors)
                try await connection.send(Self.filledLoan(capacity: 70_000, count: 65_536), count: 65_536)
                var messages = received.makeAsyncIterator()
                let message = try #require(await messages.next())
                #expect(Array(message.readableBytesView) == Self.pattern(65_536))
            }
        }
        #expect(await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0))
    }

    @Test("a request in shared memory reaches the mapped form of didReceiveRequest, and its reply comes back")
    func mappedRequest() async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { MappingHandler(messages: nil) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                let request = ByteBuffer(bytes: Self.pattern(512 * 1024))
                let reply = try await connection.request(request)
                // The handler answers with the count and the sum of the bytes it read in place.
                let expected = Self.pattern(512 * 1024).reduce(UInt64(0)) { $0 + UInt64($1) }
                #expect(String(buffer: reply) == "\(512 * 1024) \(expected)")
            }
        }
        #expect(await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0))
    }

    @Test("sending more of a loan than it holds is invalidConfiguration; more than the maximum message size is messageTooLarge; neither leaks")
    func loanMisuse() async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { EchoHandler() }
        ) { _, path in
            var configuration = Self.clientConfiguration()
            configuration.connection.maximumMessageSize = 1024
            try await Client.withConnection(to: path, configuration: configuration) { connection in
                let outside = await #expect(throws: SocketIPCError.self) {
                    try await connection.send(SharedMemoryLoan(capacity: 10), count: 11)
                }
                #expect(outside?.code == .invalidConfiguration)
                let negative = await #expect(throws: SocketIPCError.self) {
                    try await connection.send(SharedMemoryLoan(capacity: 10), count: -1)
                }
                #expect(negative?.code == .invalidConfiguration)
                let tooLarge = await #expect(throws: SocketIPCError.self) {
                    try await connection.send(SharedMemoryLoan(capacity: 4096), count: 2048)
                }
                #expect(tooLarge?.code == .messageTooLarge)
                #expect(throws: SocketIPCError.self) { _ = try SharedMemoryLoan(capacity: -1) }
                // The connection is unhurt.
                let reply = try await connection.request(ByteBuffer(string: "still here"))
                #expect(String(buffer: reply) == "still here")
                #expect(await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0), "every refused loan was unmapped and closed")
            }
        }
    }

    @Test("a loan of 0 bytes reaches the mapped form as an empty payload; one under 64 KiB is copied, not mapped")
    func emptyAndSmallMapped() async throws {
        let (received, continuation) = AsyncStream.makeStream(of: MappedPayload.self)
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { MappingHandler(messages: continuation) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                var messages = received.makeAsyncIterator()
                try await connection.send(SharedMemoryLoan(capacity: 4096), count: 0)
                let empty = try #require(await messages.next())
                #expect(empty.isEmpty && Array(empty).isEmpty)
                #expect(empty.withUnsafeBytes { $0.count } == 0)
                #expect(empty.withContiguousStorageIfAvailable { $0.count } == 0)
                #expect(empty.copyToBuffer().readableBytes == 0)
                try await connection.send(Self.filledLoan(capacity: 65_535, count: 65_535), count: 65_535)
                let small = try #require(await messages.next())
                #expect(Array(small) == Self.pattern(65_535))
                #expect(
                    await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0),
                    "held, a small payload is a copy: no mapping, no descriptor"
                )
            }
        }
    }

    @Test("a loan sent on a closed connection fails with connectionClosed and leaves nothing open or mapped")
    func loanOnClosedConnection() async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options() },
            makeHandler: { EchoHandler() }
        ) { _, path in
            let connection = try await Client.connect(to: path, configuration: Self.clientConfiguration())
            connection.close()
            await connection.waitUntilClosed()
            let error = await #expect(throws: SocketIPCError.self) {
                try await connection.send(Self.filledLoan(capacity: 1 << 20, count: 1000), count: 1000)
            }
            #expect(error?.code == .connectionClosed)
        }
        #expect(await Self.sharedMemoryInUse(settlingAt: (0, 0)) == (0, 0))
    }

    @Test("requests in shared memory for the mapped form count against maximumConcurrentRequests as any request")
    func mappedRequestsAreLimited() async throws {
        let (held, heldContinuation) = AsyncStream.makeStream(of: Reply.self)
        let counters = RequestCounters()
        try await withFramedTestServer(
            configure: {
                $0.connection = Self.options()
                $0.connection.maximumConcurrentRequests = 1
            },
            makeHandler: { HoldingMappedHandler(counters: counters, held: heldContinuation) }
        ) { _, path in
            try await Client.withConnection(to: path, configuration: Self.clientConfiguration()) { connection in
                let total = 6
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<total {
                        group.addTask { _ = try await connection.request(ByteBuffer(repeating: 7, count: 300_000)) }
                    }
                    var answered = 0
                    for await reply in held {
                        // A moment for more requests to arrive, were the limit not kept (a bounded wait for an
                        // absence; nothing waits on it).
                        try? await Task.sleep(for: .milliseconds(20))
                        counters.answered.add(1, ordering: .relaxed)
                        reply.succeed(ByteBuffer(string: "ok"))
                        answered += 1
                        if answered == total { break }
                    }
                    try await group.waitForAll()
                }
            }
        }
        #expect(counters.most.load(ordering: .relaxed) == 1, "never more than one request unanswered")
    }
}

/// Requests handed out and answered, and the most ever unanswered at once.
private final class RequestCounters: Sendable {
    let received = Atomic<Int>(0)
    let answered = Atomic<Int>(0)
    let most = Atomic<Int>(0)
}

/// Holds each mapped request's reply for the test to answer, counting the requests unanswered.
private struct HoldingMappedHandler: ConnectionHandler {
    let counters: RequestCounters
    let held: AsyncStream<Reply>.Continuation

    func didReceiveRequest(_ request: MappedPayload, reply: Reply, on connection: Connection) {
        let received = self.counters.received.add(1, ordering: .relaxed).newValue
        _ = self.counters.most.max(received - self.counters.answered.load(ordering: .relaxed), ordering: .relaxed)
        self.held.yield(reply)
    }
}

/// The whole of `path` (a `/proc` file, which may take several reads); empty if it cannot be read.
private func readToEnd(_ path: String) -> String {
    guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
    defer { try? handle.close() }
    var data = Data()
    while let chunk = try? handle.read(upToCount: 65536), !chunk.isEmpty { data.append(chunk) }
    return String(decoding: data, as: UTF8.self)
}

/// Takes messages and requests that come in shared memory in their mapped form: yields each message, and answers
/// each request with its length and the sum of its bytes, read in place.
private struct MappingHandler: ConnectionHandler {
    let messages: AsyncStream<MappedPayload>.Continuation?

    func didReceiveMessage(_ message: MappedPayload, on connection: Connection) {
        self.messages?.yield(message)
    }

    func didReceiveRequest(_ request: MappedPayload, reply: Reply, on connection: Connection) {
        let sum = request.withUnsafeBytes { $0.reduce(UInt64(0)) { $0 + UInt64($1) } }
        reply.succeed(ByteBuffer(string: "\(request.count) \(sum)"))
    }
}

/// Yields each one-way message, as a buffer.
private struct MessageRecordingHandler: ConnectionHandler {
    let messages: AsyncStream<ByteBuffer>.Continuation

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.messages.yield(message)
    }
}
