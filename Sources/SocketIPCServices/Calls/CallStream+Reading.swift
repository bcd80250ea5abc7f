import NIOCore
import SocketIPCCore
import Synchronization

// Reading a call's messages: the next one, without waiting where it is already here, and the credit it gives back.
extension CallStream {
    /// The next message, or the peer's end; waits for it.
    /// - Throws: What the call failed with (cancelled, deadline passed, connection closed); `CancellationError`
    ///   when the reading task is cancelled (on the caller's side that cancels the call, as the caller's own
    ///   cancellation does).
    nonisolated(nonsending) func next() async throws -> Inbound {
        // Most reads find their message already here (a stream in full flow, a unary call's request): take it
        // without suspending, but off the event loop give the executor's other tasks a turn now and then
        // (``offLoopRunLength``); on the loop, the buffer runs dry once the window is read, since only the loop refills it.
        if let (ready, endsRun) = try self.nextIfReceived(countingRun: !self.connection.isOnEventLoop) {
            if endsRun { await Task.yield() }
            return ready
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Inbound, any Error>) in
                var credit = 0
                var descriptors: ReceivedDescriptors?
                let action = self.state.withLock { state -> Machine.NextAction in
                    let action = state.machine.next(orWait: continuation)
                    switch action {
                    case .message(_, let grant):
                        credit = grant
                        descriptors = state.takeNextDescriptors(credit: &credit)
                    case .wait(let grant):
                        // The peer is blocked on a message larger than its credit, which this reader now asks for.
                        credit = grant
                    case .end, .fail:
                        break
                    }
                    return action
                }
                switch action {
                case .message(let message, _): continuation.resume(returning: .message(message, descriptors: descriptors))
                case .end(let status): continuation.resume(returning: .end(status))
                case .fail(let error): continuation.resume(throwing: error)
                case .wait: break
                }
                self.grant(credit)
            }
        } onCancel: {
            self.cancel(.cancelled)
        }
    }

    /// The next message, or the peer's end, if it has arrived; `nil` if nothing has yet. Does not wait.
    /// - Throws: What the call failed with.
    func nextIfReceived() throws -> Inbound? {
        try self.nextIfReceived(countingRun: false)?.inbound
    }

    /// ``nextIfReceived()``, and with `countingRun`, whether this read ends a run of ``offLoopRunLength`` reads
    /// without waiting (the reader then yields).
    private func nextIfReceived(countingRun: Bool) throws -> (inbound: Inbound, endsRun: Bool)? {
        var credit = 0
        var endsRun = false
        let ready = self.state.withLock { state -> Result<Inbound, any Error>? in
            switch state.machine.poll() {
            case .message(let message, let grant):
                credit = grant
                if countingRun {
                    state.readInRun += 1
                    if state.readInRun >= Self.offLoopRunLength {
                        state.readInRun = 0
                        endsRun = true
                    }
                }
                return .success(.message(message, descriptors: state.takeNextDescriptors(credit: &credit)))
            case .end(let status): return .success(.end(status))
            case .fail(let error): return .failure(error)
            case .wait:
                state.readInRun = 0
                return nil
            }
        }
        guard let ready else { return nil }
        self.grant(credit)
        return (try ready.get(), endsRun)
    }

    /// This side reads no more messages of the call (a unary or server-streaming handler has its request): those
    /// that come are dropped as they arrive, with their descriptors; returns whether one had already arrived, or the
    /// call failed meanwhile (a second request above the method's limit refused it): either way the handler must not
    /// run (found by a review: one refused that way still ran in its cancelled task, its side effect applied).
    func stopReceiving() -> Bool {
        self.state.withLock { state in
            let held = state.machine.stopReceiving()
            state.descriptors.waiting.removeAll()
            state.descriptors.held = 0
            return held || state.machine.failure != nil
        }
    }

    /// Gives `credit` bytes back to the peer, if any.
    func grant(_ credit: Int) {
        guard credit > 0 else { return }
        self.connection.writeCallControlFrame(id: self.id, .credit(UInt32(clamping: credit)))
    }
}
