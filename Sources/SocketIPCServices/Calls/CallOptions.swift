/// How one call is made: its deadline and its codec.
public struct CallOptions: Sendable {
    /// How long the caller waits for the call to complete, from when it is opened; `nil`, the default, waits as long
    /// as the connection is open.
    ///
    /// The timeout travels with the call (PROTOCOL.md, "Calls"): the handler sees it as ``ServiceContext/deadline``
    /// and is cancelled when it passes. The caller then gets `SocketIPCError` with code `deadlineExceeded`, and the
    /// handler's side is told with a cancel frame. As gRPC's deadlines.
    public var timeout: Duration?
    /// How requests and responses are encoded; default ``JSONCodec``. The server must use the same.
    public var codec: any MessageCodec

    /// Creates the options.
    /// - Parameters:
    ///   - timeout: The call's deadline, from when it is opened; default none.
    ///   - codec: The codec; default ``JSONCodec``.
    public init(timeout: Duration? = nil, codec: any MessageCodec = JSONCodec()) {
        self.timeout = timeout
        self.codec = codec
    }

    /// The timeout in nanoseconds, as the call open frame carries it (0 for none; at least 1 for any timeout).
    var timeoutNanoseconds: UInt64 {
        guard let timeout, timeout > .zero else { return timeout == nil ? 0 : 1 }
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !nanoseconds.overflow else { return UInt64.max }
        return UInt64(clamping: nanoseconds.partialValue + attoseconds / 1_000_000_000)
    }
}
