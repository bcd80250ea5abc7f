import SocketIPC

/// The typed workloads: `rr` and `stream` again, through the services layer (typed methods, JSON), to measure what
/// a typed call and a typed stream cost over raw frames.
enum TypedWorkloads {
    /// A value whose JSON is exactly `size` bytes: `{"s":1,"d":"xxx…"}`.
    struct Event: Codable, Sendable, Equatable {
        var s: Int
        var d: String

        /// An event whose encoding by `codec` is `size` bytes.
        init(sequence: Int, size: Int, binary: Bool = false) {
            self.s = sequence
            // JSON: `{"s":` + digits + `,"d":"` + d + `"}`; binary: 8 bytes of `s`, then `d`.
            let overhead = binary ? 8 : 5 + String(sequence).utf8.count + 6 + 2
            self.d = String(repeating: "x", count: max(size - overhead, 0))
        }

        init(s: Int, d: String) {
            self.s = s
            self.d = d
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

    /// The codec of `workload`: JSON, or the binary one for the `-binary` workloads.
    static func codec(for workload: Workload) -> any MessageCodec {
        workload == .typedRRBinary || workload == .typedStreamBinary ? BinaryEventCodec() : JSONCodec()
    }

    static func router(codec: any MessageCodec) -> ServiceRouter {
        let binary = codec is BinaryEventCodec
        var router = ServiceRouter(codec: codec)
        router.register(Echo.self) { event, _ in event }
        router.registerServerStreaming(Events.self) { request, events, _ in
            // The size is the client's to choose, within what a message may carry (no overflow on a hostile one).
            let size = request.count > 1 ? min(max(request[1], 0), 1 << 20) : 64
            let event = Event(sequence: 1, size: size, binary: binary)
            for _ in 0..<(request.first ?? 0) { try await events.write(event) }
        }
        return router
    }

    /// `typed-rr`: sequential unary calls, each checked.
    static func roundTrips(_ options: BenchmarkOptions, configuration: ClientConfiguration) async throws -> BenchmarkReport {
        let codec = Self.codec(for: options.workload)
        let callOptions = CallOptions(codec: codec)
        let request = Event(sequence: 1, size: options.size, binary: codec is BinaryEventCodec)
        return try await Client.withConnection(to: options.socket, configuration: configuration) { connection in
            for _ in 0..<options.warmup {
                guard try await connection.call(Echo.self, request, options: callOptions) == request else {
                    throw BenchmarkError("echo differs")
                }
            }
            var latencies = [UInt64]()
            latencies.reserveCapacity(options.n)
            let start = monotonicNanos()
            for _ in 0..<options.n {
                let before = monotonicNanos()
                guard try await connection.call(Echo.self, request, options: callOptions) == request else {
                    throw BenchmarkError("echo differs")
                }
                latencies.append(monotonicNanos() - before)
            }
            let elapsed = monotonicNanos() - start
            return .roundTrips(options, latencies: latencies, elapsed: elapsed, rateKey: "ops_per_s")
        }
    }

    /// `typed-stream`: one server-streaming call of `n` events, counted; the clock stops at the stream's end.
    static func stream(_ options: BenchmarkOptions, configuration: ClientConfiguration) async throws -> BenchmarkReport {
        let callOptions = CallOptions(codec: Self.codec(for: options.workload))
        return try await Client.withConnection(to: options.socket, configuration: configuration) { connection in
            func receive(_ count: Int) async throws {
                let received = try await connection.serverStreaming(
                    Events.self,
                    [count, options.size],
                    options: callOptions
                ) { events in
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

/// A codec written by hand for the benchmark's two message types (an `Event`: its sequence as 8 bytes, then its
/// text; a `[Int]`: 8 bytes each), to measure the services layer without JSON. Not a general codec.
struct BinaryEventCodec: MessageCodec {
    func encode<Value: Encodable>(_ value: Value) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try self.encode(value, into: &buffer)
        return buffer
    }

    func encode<Value: Encodable>(_ value: Value, into buffer: inout ByteBuffer) throws {
        if let event = value as? TypedWorkloads.Event {
            buffer.reserveCapacity(minimumWritableBytes: 8 + event.d.utf8.count)
            buffer.writeInteger(Int64(event.s))
            buffer.writeString(event.d)
        } else if let numbers = value as? [Int] {
            for number in numbers { buffer.writeInteger(Int64(number)) }
        } else {
            throw BenchmarkError("BinaryEventCodec encodes Event and [Int] only")
        }
    }

    func decode<Value: Decodable>(_ type: Value.Type, from buffer: ByteBuffer) throws -> Value {
        var buffer = buffer
        if Value.self == TypedWorkloads.Event.self, let sequence = buffer.readInteger(as: Int64.self),
            let text = buffer.readString(length: buffer.readableBytes)
        {
            return TypedWorkloads.Event(s: Int(sequence), d: text) as! Value
        }
        if Value.self == [Int].self {
            var numbers: [Int] = []
            while let number = buffer.readInteger(as: Int64.self) { numbers.append(Int(number)) }
            return numbers as! Value
        }
        throw BenchmarkError("BinaryEventCodec decodes Event and [Int] only")
    }
}
