import Synchronization
import Testing

/// A suite trait that lets at most ``TestConcurrencyLimit/width`` of the test cases that carry it run at once, across
/// the test process.
///
/// Swift Testing starts every test at once, so all of the suites' servers, peers and child processes compete for the
/// cooperative pool's few threads (one per core) and the CPU. On a 2-core machine a raw peer's next write could then
/// wait seconds for a pool thread, past the server's handshake timeout. With the limit, the tests that do I/O run a
/// few at a time, each promptly, and the run takes about as long (measured: two full runs at once on 2 cores, 0
/// failures at width 8 against 5–10 without a limit, 68–71 s against 62 s).
public struct TestConcurrencyLimit: SuiteTrait, TestTrait, TestScoping {
    /// How many test cases with the trait may run at once: 8.
    public static let width = 8

    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        // Around each test case only: a suite's scope would hold a place for as long as its tests run. And once only:
        // a test case with the trait twice (a nested suite's, say) must not take two places, which could deadlock.
        guard testCase != nil, !Self.holdsPlace else { return try await function() }
        await TestGate.shared.enter()
        defer { TestGate.shared.leave() }
        try await Self.$holdsPlace.withValue(true) { try await function() }
    }

    /// Whether the running test case holds a place already.
    @TaskLocal private static var holdsPlace = false
}

extension Trait where Self == TestConcurrencyLimit {
    /// Lets at most ``TestConcurrencyLimit/width`` test cases with this trait run at once.
    public static var limitedConcurrency: Self { TestConcurrencyLimit() }
}

/// A counting semaphore for tasks: ``enter()`` waits (suspended, holding no thread) while `width` are in.
private final class TestGate: Sendable {
    static let shared = TestGate(width: TestConcurrencyLimit.width)

    private struct State {
        var free: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    private init(width: Int) {
        self.state = Mutex(State(free: width))
    }

    func enter() async {
        await withCheckedContinuation { continuation in
            let admitted = self.state.withLock { state in
                guard state.free > 0 else {
                    state.waiting.append(continuation)
                    return false
                }
                state.free -= 1
                return true
            }
            if admitted { continuation.resume() }
        }
    }

    func leave() {
        let next = self.state.withLock { state in
            guard !state.waiting.isEmpty else {
                state.free += 1
                return nil as CheckedContinuation<Void, Never>?
            }
            // The place passes straight to the longest waiter.
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
