import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The signals that shut a server command (`serve`, `listen`) down gracefully: SIGTERM, SIGINT and SIGHUP.
///
/// SIGHUP is the hang-up of the terminal or SSH session the command runs in; its default action would end the server
/// at once, leaving its socket file and the commands that `serve --exec` started. It is left alone when it is ignored
/// at start (`nohup`), as the user asked.
enum ShutdownSignals {
    /// SIGTERM, SIGINT, and SIGHUP unless it is ignored.
    static var server: [UnixSignal] {
        Self.isIgnored(SIGHUP) ? [.sigterm, .sigint] : [.sigterm, .sigint, .sighup]
    }

    /// Whether `number`'s disposition is to ignore it, read by setting it and setting it back.
    static func isIgnored(_ number: Int32) -> Bool {
        let previous = signal(number, SIG_IGN)
        signal(number, previous)
        return unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
    }
}
