import SocketIPCCore
import Synchronization

/// Fires once; ``wait(upTo:)`` returns when it has, or after a delay: a client's shutdown, a connection's close.
final class OneShotSignal: Sendable {
    private let state = Mutex<(fired: Bool, waiters: [Int: CheckedContinuation<Void, Never>])>((false, [:]))
    private let ids = Atomic<Int>(0)

    func fire() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether it has fired.
    var hasFired: Bool { self.state.withLock { $0.fired } }

    /// Returns after `delay`, or earlier once fired (or the task is cancelled).
    func wait(upTo delay: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: delay.asWait) }
            group.addTask { await self.waitUntilFired() }
            await group.next()
            group.cancelAll()
        }
    }

    /// Returns once fired, or once the task is cancelled.
    func waitUntilFired() async {
        let id = self.ids.wrappingAdd(1, ordering: .relaxed).newValue
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = self.state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
