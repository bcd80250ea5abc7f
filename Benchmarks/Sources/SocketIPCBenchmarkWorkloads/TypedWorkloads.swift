import SocketIPC

/// The typed workloads: `rr` and `stream` again, through the services layer (typed methods, JSON), to measure what
/// a typed call and a typed stream cost over raw frames.
enum TypedWorkloads {
    /// A value whose JSON is exactly `size` bytes: `{"s":1,"d":"xxx…"}`.
    struct Event: Codable, Sendable, Equatable {
        var s: Int
        var d: String

        init(sequence: Int, size: Int) {
            self.s = sequence
            // `{"s":` + digits + `,"d":"` + d + `"}`
            let overhead = 5 + String(sequence).utf8.count + 6 + 2
            self.d = String(repeating: "x", count: max(size - overhead, 0))
        }
    }

    enum Echo: ServiceMethod {
        static let name = "bench.echo"
        typealias Request = Event
        typealias Response = Event
    }

    enum Events: ServiceMethod {
        static let name = "bench.events"
        /// How many events, and the size of each.
        typealias Request = [Int]
        typealias Response = Event
    }

    static let router: ServiceRouter = {
        var router = ServiceRouter()
        router.register(Echo.self) { event, _ in event }
        router.registerServerStreaming(Events.self) { request, events, _ in
            let event = Event(sequence: 1, size: request.count > 1 ? request[1] : 64)
            for _ in 0..<(request.first ?? 0) { try await events.write(event) }
        }
        return router
    }()

    /// `typed-rr`: sequential unary calls, each checked.
    static func roundTrips(_ options: BenchmarkOptions, configuration: ClientConfiguration) async throws -> BenchmarkReport {
        let request = Event(sequence: 1, size: options.size)
        return try await Client.withConnection(to: options.socket, configuration: configuration) { connection in
            for _ in 0..<options.warmup {
                guard try await connection.call(Echo.self, request) == request else { throw BenchmarkError("echo differs") }
            }
            var latencies = [UInt64]()
            latencies.reserveCapacity(options.n)
            let start = monotonicNanos()
            for _ in 0..<options.n {
                let before = monotonicNanos()
                guard try await connection.call(Echo.self, request) == request else { throw BenchmarkError("echo differs") }
                latencies.append(monotonicNanos() - before)
            }
            let elapsed = monotonicNanos() - start
            return .roundTrips(options, latencies: latencies, elapsed: elapsed, rateKey: "ops_per_s")
        }
    }

    /// `typed-stream`: one server-streaming call of `n` events, counted; the clock stops at the stream's end.
    static func stream(_ options: BenchmarkOptions, configuration: ClientConfiguration) async throws -> BenchmarkReport {
        try await Client.withConnection(to: options.socket, configuration: configuration) { connection in
            func receive(_ count: Int) async throws {
                let received = try await connection.serverStreaming(Events.self, [count, options.size]) { events in
                    var received = 0
                    for try await _ in events { received += 1 }
                    return received
                }
                guard received == count else { throw BenchmarkError("\(received) events of \(count) arrived") }
            }
            try await receive(options.warmup)
            let start = monotonicNanos()
            try await receive(options.n)
            return .oneWay(options, elapsed: monotonicNanos() - start)
        }
    }
}
