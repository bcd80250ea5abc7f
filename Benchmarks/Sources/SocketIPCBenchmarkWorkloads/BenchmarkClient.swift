import NIOCore
import SocketIPC
import Synchronization

/// The client side of the benchmark workloads, written with SocketIPC's public API as a user would.
public enum BenchmarkClient {
    /// Runs one workload against a server of ``BenchmarkServer`` and returns its report; for `idle-mem`, opens the
    /// connections, calls `onReady` and holds them until the task is cancelled or the process killed.
    /// - Throws: ``BenchmarkError`` when a reply is wrong, or what SocketIPC throws.
    public static func run(_ options: BenchmarkOptions, onReady: @Sendable () -> Void = {}) async throws -> BenchmarkReport? {
        switch options.workload {
        case .seed: return try await Self.seed(options)
        case .rr: return try await Self.roundTrips(options)
        case .stream, .bulk: return try await Self.oneWay(options)
        case .fanin: return try await Self.fanIn(options)
        case .typedRR, .typedRRBinary:
            return try await TypedWorkloads.roundTrips(options, configuration: Self.clientConfiguration(options))
        case .typedStream, .typedStreamBinary:
            return try await TypedWorkloads.stream(options, configuration: Self.clientConfiguration(options))
        case .idleMemory:
            try await Self.idle(options, onReady: onReady)
            return nil
        }
    }

    /// A payload of `size` bytes (at least one) whose first byte is `op`.
    static func payload(_ op: Character, size: Int) -> ByteBuffer {
        var buffer = ByteBuffer(repeating: UInt8(ascii: "x"), count: max(1, size))
        buffer.setInteger(op.asciiValue!, at: buffer.readerIndex)
        return buffer
    }

    // MARK: W1 seed

    private static func seed(_ options: BenchmarkOptions) async throws -> BenchmarkReport {
        let message = Self.payload("S", size: options.size)
        var expected = ByteBuffer()
        expected.writeInteger(UInt32(message.readableBytes))
        let acknowledgement = expected

        @Sendable func runWorkers(count: Int, measure: Bool) async throws -> [UInt64] {
            let next = TicketCounter()
            return try await withThrowingTaskGroup(of: [UInt64].self) { group in
                for _ in 0..<options.conns {
                    group.addTask {
                        // On an event loop, each exchange stays on one thread from connect to acknowledgement.
                        try await Client.withEventLoopExecutor {
                            var latencies: [UInt64] = []
                            if measure { latencies.reserveCapacity(count / options.conns + 1) }
                            while next.take() < count {
                                let start = monotonicNanos()
                                let answer = try await Client.sendMessage(message, to: options.socket)
                                if measure { latencies.append(monotonicNanos() - start) }
                                guard answer == acknowledgement else {
                                    throw BenchmarkError("seed: acknowledgement \(answer) is not the 4-byte length \(message.readableBytes)")
                                }
                            }
                            return latencies
                        }
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
        }

        _ = try await runWorkers(count: options.warmup, measure: false)
        let start = monotonicNanos()
        let latencies = try await runWorkers(count: options.n, measure: true)
        let elapsed = monotonicNanos() - start
        return .roundTrips(options, latencies: latencies, elapsed: elapsed, rateKey: "conns_per_s")
    }

    // MARK: W2 rr

    private static func roundTrips(_ options: BenchmarkOptions) async throws -> BenchmarkReport {
        let request = Self.payload("R", size: options.size)
        return try await Client.withConnection(to: options.socket, configuration: Self.clientConfiguration(options)) { connection in
            for _ in 0..<options.warmup { try await Self.echo(request, on: connection) }
            var latencies = [UInt64]()
            latencies.reserveCapacity(options.n)
            let start = monotonicNanos()
            for _ in 0..<options.n {
                let before = monotonicNanos()
                try await Self.echo(request, on: connection)
                latencies.append(monotonicNanos() - before)
            }
            let elapsed = monotonicNanos() - start
            return .roundTrips(options, latencies: latencies, elapsed: elapsed, rateKey: "ops_per_s")
        }
    }

    @inline(__always)
    private static func echo(_ request: ByteBuffer, on connection: Connection) async throws {
        let reply = try await connection.request(request)
        guard reply == request else { throw BenchmarkError("the echo differs from the request") }
    }

    // MARK: W3 stream, W4 bulk

    private static func oneWay(_ options: BenchmarkOptions) async throws -> BenchmarkReport {
        let message = Self.payload("O", size: options.size)
        let barrier = Self.payload("B", size: 1)
        return try await Client.withConnection(to: options.socket, configuration: Self.clientConfiguration(options)) { connection in
            var sent: UInt64 = 0
            func burst(_ count: Int) async throws {
                if options.loansSharedMemory {
                    for _ in 0..<count {
                        var loan = try SharedMemoryLoan(capacity: message.readableBytes)
                        loan.withUnsafeMutableBytes { bytes in
                            message.withUnsafeReadableBytes { bytes.copyMemory(from: $0) }
                        }
                        try await connection.send(loan, count: message.readableBytes)
                    }
                } else {
                    for _ in 0..<count { try await connection.send(message) }
                }
                sent += UInt64(count)
                var reply = try await connection.request(barrier)
                guard let counted = reply.readInteger(as: UInt64.self), counted == sent else {
                    throw BenchmarkError("the barrier's count differs from the \(sent) one-way messages sent")
                }
            }
            try await burst(options.warmup)
            let start = monotonicNanos()
            try await burst(options.n)
            return .oneWay(options, elapsed: monotonicNanos() - start)
        }
    }

    // MARK: W5 fanin

    private static func fanIn(_ options: BenchmarkOptions) async throws -> BenchmarkReport {
        let request = Self.payload("R", size: options.size)
        let gate = StartGate(parties: options.conns)
        let results = try await withThrowingTaskGroup(of: (latencies: [UInt64], end: UInt64).self) { group in
            for _ in 0..<options.conns {
                group.addTask {
                    try await Client.withConnection(to: options.socket, configuration: Self.clientConfiguration(options)) { connection in
                        for _ in 0..<options.warmup { try await Self.echo(request, on: connection) }
                        var latencies = [UInt64]()
                        latencies.reserveCapacity(options.n)
                        await gate.arriveAndWait()
                        for _ in 0..<options.n {
                            let before = monotonicNanos()
                            try await Self.echo(request, on: connection)
                            latencies.append(monotonicNanos() - before)
                        }
                        return (latencies, monotonicNanos())
                    }
                }
            }
            return try await group.reduce(into: [(latencies: [UInt64], end: UInt64)]()) { $0.append($1) }
        }
        let end = results.map(\.end).max() ?? gate.openedAt
        return .roundTrips(
            options,
            latencies: results.flatMap(\.latencies),
            elapsed: end - gate.openedAt,
            rateKey: "ops_per_s"
        )
    }

    // MARK: W6 idle-mem

    private static func idle(_ options: BenchmarkOptions, onReady: () -> Void) async throws {
        let request = Self.payload("R", size: options.size)
        var connections: [Connection] = []
        connections.reserveCapacity(options.conns)
        defer { for connection in connections { connection.close() } }
        for _ in 0..<options.conns {
            let connection = try await Client.connect(to: options.socket, configuration: Self.clientConfiguration(options))
            connections.append(connection)
            try await Self.echo(request, on: connection)
        }
        onReady()
        while !Task.isCancelled {
            try await Task.sleep(for: .seconds(3600))
        }
    }

    static func clientConfiguration(_ options: BenchmarkOptions) -> ClientConfiguration {
        var configuration = ClientConfiguration()
        configuration.connectTimeout = .seconds(60)
        configuration.connection.busyPolling = options.busyPoll
        configuration.connection.maximumDescriptorsPerMessage = options.maximumDescriptors
        if let threshold = options.sharedPayloadThreshold { configuration.connection.sharedPayloadThreshold = threshold }
        return configuration
    }
}

/// Lets `parties` tasks wait until all of them have arrived, then releases them together and records when.
final class StartGate: Sendable {
    private struct State {
        var arrived = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
        var openedAt: UInt64 = 0
    }

    private let parties: Int
    private let state = Mutex(State())

    init(parties: Int) {
        self.parties = parties
    }

    /// When the gate opened, in monotonic nanoseconds.
    var openedAt: UInt64 { self.state.withLock { $0.openedAt } }

    func arriveAndWait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let release = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.arrived += 1
                state.waiters.append(continuation)
                guard state.arrived == self.parties else { return [] }
                state.openedAt = monotonicNanos()
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in release { waiter.resume() }
        }
    }
}

/// Hands out 0, 1, 2, … to any number of tasks.
final class TicketCounter: Sendable {
    private let next = Atomic<Int>(0)

    func take() -> Int { self.next.wrappingAdd(1, ordering: .relaxed).oldValue }
}
