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
        // At most an hour: a longer one could wrap the deadline; none below zero.
        self.turnTimeNanoseconds = value.turnTime.map {
            UInt64(min(max(TimeAmount($0).nanoseconds, 0), TimeAmount.hours(1).nanoseconds))
        } ?? .max
    }
}
