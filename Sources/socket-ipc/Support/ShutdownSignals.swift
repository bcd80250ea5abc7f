import ServiceLifecycle
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

    /// Runs `group` until it returns. The first of `signals` begins its graceful shutdown; a second one while it
    /// drains cancels the group, which closes what is left at once, without the rest of the grace period, after
    /// `onSecond` has run: a second Ctrl-C means "stop now", as it does for PostgreSQL's postmaster (smart, then fast
    /// shutdown), Docker and systemd's own `systemctl stop` escalation.
    ///
    /// The signals are this function's alone: the group must have no `gracefulShutdownSignals` of its own. (With two
    /// `UnixSignalsSequence`s of the same signals, the group's ended when it had taken the first, and with it the
    /// delivery of the later ones to this one: found by a review, a second signal a moment later did nothing.)
    /// - Parameters:
    ///   - group: A group without `gracefulShutdownSignals`.
    ///   - signals: The signals counted; trapped before the group starts, so that none is missed.
    ///   - stop: Stops the group at once, as the second signal does, when it yields or finishes; `nil` for none.
    ///   - afterwards: What must still end once the group has returned or thrown (serve's one-way runs, which may
    ///     outlive the server's drain): the signals are still counted meanwhile, so that a second one reaches
    ///     `onSecond` (before, it came when nothing listened any more, and was lost).
    ///   - onSecond: Called with the second signal, before the group is cancelled.
    /// - Throws: What `group.run()` throws.
    static func run(
        _ group: ServiceGroup,
        stoppingAtSecondOf signals: [UnixSignal],
        orWhen stop: AsyncStream<Void>? = nil,
        afterwards: @escaping @Sendable () async -> Void = {},
        onSecond: @escaping @Sendable (UnixSignal) -> Void
    ) async throws {
        let caught = await UnixSignalsSequence(trapping: signals)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                do {
                    try await group.run()
                } catch {
                    await afterwards()
                    throw error
                }
                await afterwards()
            }
            tasks.addTask {
                var count = 0
                // Ends with `nil` when cancelled: the group returned first.
                for await signal in caught {
                    count += 1
                    if count == 1 {
                        await group.triggerGracefulShutdown()
                    } else {
                        onSecond(signal)
                        return
                    }
                }
            }
            if let stop {
                tasks.addTask {
                    var iterator = stop.makeAsyncIterator()
                    _ = await iterator.next()
                }
            }
            // The group returned (or threw, which ends this too) and `afterwards` with it, the second signal came, or
            // `stop` did: either way the other tasks are cancelled, and the group's task, when cancelled, still
            // returns only once the server is closed and `afterwards` has returned.
            _ = try await tasks.next()
            tasks.cancelAll()
            while try await tasks.next() != nil {}
        }
    }

    /// Whether `number`'s disposition is to ignore it, read by setting it and setting it back.
    static func isIgnored(_ number: Int32) -> Bool {
        let previous = signal(number, SIG_IGN)
        signal(number, previous)
        return unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
    }
}
