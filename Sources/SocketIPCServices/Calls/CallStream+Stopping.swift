import NIOCore
import SocketIPCCore
import Synchronization

// The handler's side: why its handler must stop, and running it so that it can be stopped.
extension CallStream {
    /// Tells the handler's runner why the call must stop, then fails the call with `error` (what the handler's
    /// reads and writes throw from then on), if one is given, and cancels the handler's task unless the reason is
    /// ``StopReason/finished``; the first reason counts. With `unlessStopped`, does nothing at all once a reason is
    /// recorded (the call is ending anyway: its handler finished, it was cancelled).
    ///
    /// The reason is recorded before the call fails: a handler woken by the failure on another thread may end at
    /// once, and must find the reason then, or it would count as finished and send an end the caller no longer
    /// wants (PROTOCOL.md: after a caller's cancel the handler's side sends nothing more for the call).
    func stopHandler(_ reason: StopReason, failing error: (any Error)? = nil, unlessStopped: Bool = false) {
        var handlerFinished = false
        var alreadyStopped = false
        let task = self.stop.withLock { stop -> HandlerTask? in
            alreadyStopped = stop.reason != nil
            if unlessStopped && alreadyStopped { return nil }
            handlerFinished = stop.reason == .finished
            if stop.reason == nil { stop.reason = reason }
            guard reason != .finished, let task = stop.handlerTask else { return nil }
            stop.cancelsInProgress += 1
            return task
        }
        // A server's shutdown ends response streams whose handler still writes; one whose handler has returned has
        // written all it will, and its last message (parked for credit) and end still go (found by a review: they
        // were dropped, and the caller got connectionClosed).
        if handlerFinished, reason == .serverGoingAway { return }
        if unlessStopped && alreadyStopped { return }
        // Messages that arrived before the connection closed are still read: a stream the handler completed (its end
        // came before the close) or one cut off (its messages, then the error) loses none of them (found by a review:
        // a server stream read after its server's graceful shutdown came back empty, and reported a normal end).
        if let error { self.fail(error, keepingReceived: reason == .connectionClosed) }
        guard let task else { return }
        // The task is alive: it waits at its end for this cancel (see `runStoppable`).
        task.task.cancel()
        let waiter = self.stop.withLock { stop -> UnsafeContinuation<Void, Never>? in
            stop.cancelsInProgress -= 1
            guard stop.cancelsInProgress == 0 else { return nil }
            defer { stop.endWaiter = nil }
            return stop.endWaiter
        }
        waiter?.resume()
    }

    /// Why the call stopped, once it has.
    var stopReason: StopReason? { self.stop.withLock { $0.reason } }

    /// Runs `handler` in the current task, which ``stopHandler(_:)`` cancels when the call must stop (at once, if
    /// it already must); then records that the handler finished, if nothing stopped it first.
    ///
    /// The handler runs in its call's own task rather than in a child of it: a child would cost a task and a
    /// wake-up of the waiting parent on every call.
    nonisolated(nonsending) func runStoppable(_ handler: () async -> Void) async {
        let task = withUnsafeCurrentTask { $0.map(HandlerTask.init) }
        let stopNow = self.stop.withLock { stop -> Bool in
            stop.handlerTask = task
            if let reason = stop.reason, reason != .finished { return true }
            return false
        }
        if stopNow { task?.task.cancel() }
        await handler()
        // From here on no cancel starts; one in progress on another thread still uses the task: wait for it.
        let mustWait = self.stop.withLock { stop -> Bool in
            stop.handlerTask = nil
            if stop.reason == nil { stop.reason = .finished }
            return stop.cancelsInProgress > 0
        }
        guard mustWait else { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resumeNow = self.stop.withLock { stop -> Bool in
                if stop.cancelsInProgress == 0 { return true }
                stop.endWaiter = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
