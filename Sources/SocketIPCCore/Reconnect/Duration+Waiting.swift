extension Duration {
    /// The longest wait SocketIPC sets up: 100 years. `Task.sleep(for:)` traps on a duration past about 292 years
    /// (its nanoseconds do not fit in 64 bits), and so does converting one to `Int64` nanoseconds.
    package static var longestWait: Duration { .seconds(100 * 365 * 86_400) }

    /// This duration as a wait: between zero and ``longestWait``, so that a setting such as `.seconds(Int64.max)`
    /// means "for ever, in practice", never a trap (found by a review: `waitForConnectionTimeout` and a backoff's
    /// delays that large crashed the client on their first use).
    package var asWait: Duration {
        if self < .zero { return .zero }
        return self > Self.longestWait ? Self.longestWait : self
    }
}
