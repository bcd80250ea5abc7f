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

extension Duration {
    /// This duration for a person to read, rounded to the millisecond: `3 seconds`, `2.5 seconds`, `0.25 seconds`,
    /// where `Duration`'s own description gives every attosecond a timer left (`2.999998718 seconds`).
    package var roundedText: String {
        let milliseconds = (self / .milliseconds(1)).rounded()
        guard milliseconds.isFinite, abs(milliseconds) < 1e15 else { return "\(self)" }
        let whole = Int64(milliseconds)
        let seconds = whole / 1000
        var fraction = String(abs(whole % 1000))
        while fraction.count < 3 { fraction = "0" + fraction }
        while fraction.hasSuffix("0") { fraction.removeLast() }
        let sign = whole < 0 && seconds == 0 ? "-" : ""
        let number = fraction.isEmpty ? "\(sign)\(seconds)" : "\(sign)\(seconds).\(fraction)"
        return number == "1" ? "1 second" : "\(number) seconds"
    }
}
