import NIOCore

/// One connection's ``ConnectionOptions`` held by reference, so that a server's connections share one copy: the
/// options are about 200 bytes, and a connection's ``Connection`` and ``ConnectionChannelHandler`` each kept their own,
/// which is a tenth of what an idle connection costs (`BENCHMARKS.md`, "An idle connection's memory").
final class SharedConnectionOptions: Sendable {
    /// The options.
    let value: ConnectionOptions
    /// ``ConnectionOptions/turnTime`` in nanoseconds, `UInt64.max` for none: read once per read.
    let turnTimeNanoseconds: UInt64

    init(_ value: ConnectionOptions) {
        self.value = value
        self.turnTimeNanoseconds = value.turnTime.map { UInt64(TimeAmount($0).nanoseconds) } ?? .max
    }
}
