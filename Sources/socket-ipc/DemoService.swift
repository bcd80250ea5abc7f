import Foundation
import SocketIPC
import Synchronization

/// The small typed service that `serve` (framed) and `demo` serve, so that `call` and `watch` can be tried without
/// writing one.
enum DemoService {
    /// `demo.echo`: answers its request, any JSON value.
    enum Echo: ServiceMethod {
        static let name = "demo.echo"
        typealias Request = JSONValue
        typealias Response = JSONValue
        static let isIdempotent = true
        static var maximumRequestSize: Int? { DemoCodec.maximumValueSize }
    }

    /// `demo.count`: server streaming; for `n` it sends `0`, `1`, …, `n - 1` and ends.
    enum Count: ServiceMethod {
        static let name = "demo.count"
        typealias Request = Int
        typealias Response = Int
        static var maximumRequestSize: Int? { DemoService.maximumNumberSize }
    }

    /// `demo.sleep`: sleeps the seconds it is sent, then answers them; cancelled by the call's deadline.
    enum Sleep: ServiceMethod {
        static let name = "demo.sleep"
        typealias Request = Double
        typealias Response = Double
        static var maximumRequestSize: Int? { DemoService.maximumNumberSize }
    }

    /// `demo.increment`: adds its request to the counter and answers the new value.
    enum Increment: ServiceMethod {
        static let name = "demo.increment"
        typealias Request = Int
        typealias Response = Int
        static var maximumRequestSize: Int? { DemoService.maximumNumberSize }
    }

    /// `demo.counter`: server streaming; the counter's value now, then each new value, until the caller stops.
    /// The request is ignored (send `{}`).
    enum Counter: ServiceMethod {
        static let name = "demo.counter"
        typealias Request = JSONValue
        typealias Response = Int
        static var maximumRequestSize: Int? { DemoService.maximumNumberSize }
    }

    /// The largest request of the methods that take a number (or ignore their request): 1 KiB.
    static let maximumNumberSize = 1024

    /// The methods, one line each, for the help.
    static let summary = """
        demo.echo (any JSON up to 1 MiB: answers it), demo.count (n: streams 0 to n-1), demo.sleep (seconds: answers after \
        sleeping them), demo.increment (n: adds n to a counter and answers its value), demo.counter ({}: streams the \
        counter's value now and after each change; at most 128 at once per user, beyond which resourceExhausted). A \
        negative count or sleep fails with the application error invalidArgument. Requests other than demo.echo's take at \
        most 1 KiB; a larger request ends its call with invalidMessage.
        """

    /// A router that serves the methods, with `counter` as `demo.increment`'s and `demo.counter`'s state, in
    /// ``DemoCodec``'s JSON.
    static func router(counter: SharedCounter = SharedCounter()) -> ServiceRouter {
        var router = ServiceRouter(codec: DemoCodec())
        // Off the event loops: a request's decoding, the handler and the response's encoding cost CPU in proportion
        // to what a peer sent, and a demo has no need of the lower latency.
        router.runsHandlersOnEventLoop = false
        router.register(Echo.self) { request, _ in request }
        router.registerServerStreaming(Count.self) { count, writer, _ in
            guard count >= 0 else {
                throw invalidArgument("cannot count to a negative number; got \(count)", ["count": count])
            }
            for number in 0..<count { try await writer.write(number) }
        }
        router.register(Sleep.self) { seconds, context in
            guard seconds >= 0 else {
                throw invalidArgument("cannot sleep a negative time; got \(seconds) s", ["seconds": seconds])
            }
            // Until the time is up, or the call is cancelled (by its deadline, the caller, or the connection's close);
            // not Task.sleep, whose cancelled timers keep their memory until their time (ServiceContext.sleep).
            try await context.sleep(for: duration(seconds: seconds))
            return seconds
        }
        router.register(Increment.self) { amount, _ in counter.add(amount) }
        router.registerServerStreaming(Counter.self) { _, writer, context in
            guard let (current, changes) = counter.watch(by: context.peer?.userID) else {
                throw ServiceError(
                    code: "resourceExhausted",
                    message: "at most \(SharedCounter.watchersPerUser) watches of the counter per user at once",
                    details: ["limit": SharedCounter.watchersPerUser]
                )
            }
            try await writer.write(current)
            for await value in changes { try await writer.write(value) }
            // The changes end only when this task is cancelled: never end the stream as if it were complete.
            throw CancellationError()
        }
        return router
    }

    private static func invalidArgument(_ message: String, _ details: some Encodable & Sendable) -> ServiceError {
        ServiceError(code: "invalidArgument", message: message, details: details)
    }
}

/// An integer that calls can change and watch; it outlives the server that serves it (as a database would), so that
/// `demo` can show a watch carrying on across a restart.
final class SharedCounter: Sendable {
    private struct State {
        var value = 0
        var nextWatcher = 0
        var watchers: [Int: AsyncStream<Int>.Continuation] = [:]
        /// The watchers of each user (`UInt32.max`: credentials unknown).
        var watchersByUser: [UInt32: Int] = [:]
    }

    /// The most watchers one user may have at once: 128. Every change wakes every watcher, so one user's 10,000
    /// watches and a loop of increments held another user's calls for 2–3 s (a review; 0.05 s with one watcher).
    static let watchersPerUser = 128

    private let state = Mutex(State())
    /// Held while the watchers are told, so that they see the values in order; `state` is not: a watcher's
    /// `onTermination` takes `state` while its task's cancellation holds that task, and a `yield` under `state`
    /// would wait for the same task: a deadlock (found by fuzzing: it stopped an event loop for good).
    private let telling = Mutex(())

    /// Adds `amount` (wrapping on overflow), tells the watchers, and returns the new value.
    func add(_ amount: Int) -> Int {
        self.telling.withLock { _ in
            let (value, watchers) = self.state.withLock { state in
                state.value &+= amount
                return (state.value, Array(state.watchers.values))
            }
            for watcher in watchers { watcher.yield(value) }
            return value
        }
    }

    /// The value now and its changes from then on, with none missed in between, for a watcher of `user`; `nil` when
    /// that user has ``watchersPerUser`` already. A watcher that falls behind sees the newest value.
    func watch(by user: UInt32?) -> (current: Int, changes: AsyncStream<Int>)? {
        let user = user ?? .max
        let (changes, continuation) = AsyncStream.makeStream(of: Int.self, bufferingPolicy: .bufferingNewest(1))
        // Under `telling`: no change is told between the value read here and the watcher's registration.
        let registered: (id: Int, current: Int)? = self.telling.withLock { _ in
            self.state.withLock { state in
                guard state.watchersByUser[user, default: 0] < Self.watchersPerUser else { return nil }
                state.watchersByUser[user, default: 0] += 1
                let id = state.nextWatcher
                state.nextWatcher += 1
                state.watchers[id] = continuation
                return (id, state.value)
            }
        }
        guard let (id, current) = registered else {
            continuation.finish()
            return nil
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { state in
                guard state.watchers.removeValue(forKey: id) != nil else { return }
                let left = state.watchersByUser[user, default: 1] - 1
                state.watchersByUser[user] = left > 0 ? left : nil
            }
        }
        return (current, changes)
    }
}
