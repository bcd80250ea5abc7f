import SocketIPC

/// The workloads of the shared UDS benchmark (`shared/bench/README.md`): W1 `seed` to W6 `idle-mem`.
public enum Workload: String, CaseIterable, Sendable {
    /// W1: one EOF-style message per connection, acknowledged with its byte count.
    case seed
    /// W2: sequential round trips on one connection.
    case rr
    /// W3: pipelined one-way messages of 64 bytes, then a barrier.
    case stream
    /// W4: pipelined one-way messages of 1 MiB, then a barrier.
    case bulk
    /// W5: many connections at once, each doing sequential round trips.
    case fanin
    /// W6: many idle connections, for memory per connection.
    case idleMemory = "idle-mem"
    /// W2 as typed calls of the services layer: sequential unary calls of a `Codable` value whose JSON is 64 bytes.
    /// SocketIPC's own; `Benchmarks/tools/typed.sh` runs it beside `rr`.
    case typedRR = "typed-rr"
    /// W3 as a typed server stream: one call whose handler writes `n` `Codable` events of 64 bytes of JSON each,
    /// with the stream's flow control. SocketIPC's own; `Benchmarks/tools/typed.sh` runs it beside `stream`.
    case typedStream = "typed-stream"
    /// `typed-rr` with a hand-written binary codec for the benchmark's one type instead of JSON: what the services
    /// layer costs without Foundation's JSON.
    case typedRRBinary = "typed-rr-binary"
    /// `typed-stream` with the hand-written binary codec.
    case typedStreamBinary = "typed-stream-binary"

    /// Whether the workload is one of the typed ones, served by a service router.
    var isTyped: Bool { [.typedRR, .typedStream, .typedRRBinary, .typedStreamBinary].contains(self) }

    /// The full `n`, `conns` and `size` of the workload, as the harness runs it.
    public var defaults: (n: Int, conns: Int, size: Int) {
        switch self {
        case .seed: (50_000, 8, 128)
        case .rr: (200_000, 1, 64)
        case .stream: (2_000_000, 1, 64)
        case .bulk: (2_048, 1, 1_048_576)
        case .fanin: (2_000, 256, 64)
        case .idleMemory: (0, 5_000, 64)
        case .typedRR, .typedRRBinary: (200_000, 1, 64)
        case .typedStream, .typedStreamBinary: (2_000_000, 1, 64)
        }
    }
}

/// The parameters of one client run.
public struct BenchmarkOptions: Sendable {
    /// The server's socket path.
    public var socket: String
    /// What to run.
    public var workload: Workload
    /// Timed operations (per connection for `fanin`).
    public var n: Int
    /// Connections.
    public var conns: Int
    /// Payload bytes.
    public var size: Int
    /// The connections' `ConnectionOptions.busyPolling`; default the library's (adaptive).
    public var busyPoll: BusyPolling
    /// The connections' `ConnectionOptions.maximumDescriptorsPerMessage`; above 0 their bytes go through the
    /// descriptor relay (to measure what it costs). Default 0.
    public var maximumDescriptors: Int
    /// The connections' `ConnectionOptions.sharedPayloadThreshold`; `nil` keeps the library's default.
    public var sharedPayloadThreshold: Int?
    /// Whether `stream` and `bulk` send each one-way message as a `SharedMemoryLoan` filled in place (a copy of the
    /// prepared payload into it, as a producer writing its bytes would) instead of a buffer. Default `false`.
    public var loansSharedMemory: Bool

    /// Creates options.
    public init(
        socket: String,
        workload: Workload,
        n: Int,
        conns: Int,
        size: Int,
        busyPoll: BusyPolling = .adaptive(),
        maximumDescriptors: Int = 0,
        sharedPayloadThreshold: Int? = nil,
        loansSharedMemory: Bool = false
    ) {
        self.loansSharedMemory = loansSharedMemory
        self.sharedPayloadThreshold = sharedPayloadThreshold
        self.busyPoll = busyPoll
        self.maximumDescriptors = maximumDescriptors
        self.socket = socket
        self.workload = workload
        self.n = n
        self.conns = conns
        self.size = size
    }

    /// Untimed warm-up operations: a tenth of `n`, at least one.
    var warmup: Int { max(1, self.n / 10) }
}

/// A failed check: a reply that is not what the workload expects.
public struct BenchmarkError: Error, CustomStringConvertible {
    /// What went wrong.
    public let description: String
    init(_ description: String) { self.description = description }
}
