import NIOCore
import SocketIPCCore
import Synchronization

// Ending a call: the caller's cancel, a failure, and the waits on the connection's write queue it ends.
extension CallStream {
    /// The caller gives the call up: tells the handler's side (a cancel frame) unless the call already ended, and
    /// fails what waits with `error`, by default `CancellationError` or `deadlineExceeded` as `reason` says.
    func cancel(_ reason: CallCancelReason, failing error: @autoclosure () -> (any Error)? = nil) {
        guard self.isCaller else {
            // The handler's own task was cancelled (its connection closed or its server's grace period ended).
            self.fail(CancellationError())
            return
        }
        let (wasOpen, isOver) = self.state.withLock { locked in
            let state = locked.machine
            return (
                state.failure == nil && !state.inboundEnded,
                state.failure != nil || (state.inboundEnded && state.outboundEnded && !state.hasWaiters)
            )
        }
        // Failed already, or ended both ways with nobody waiting (a call that completed): nothing to wake, nothing
        // to tell the peer. A writer that still waits for credit (one a body left running) is failed below.
        if isOver { return }
        let error: any Error =
            error() ?? (reason == .deadlineExceeded ? Self.deadlineError(self.method) : CancellationError())
        self.fail(error)
        if wasOpen { self.connection.queueCallControlFrame(id: self.id, .cancel(reason)) }
    }

    /// Fails the call with `error`: everything waiting and everything later throws it; reads first take the messages
    /// already received if `keepingReceived` (``CallStateMachine/fail(_:keepingReceived:)``).
    func fail(_ error: any Error, keepingReceived: Bool = false) {
        var parkedWaiter: UnsafeContinuation<Void, Never>?
        var writeWaits: [UInt64] = []
        let action = self.state.withLock { locked in
            let action = locked.machine.fail(error, keepingReceived: keepingReceived)
            // A parked message never goes now (its descriptors are closed as it is released).
            if locked.machine.failure != nil {
                parkedWaiter = locked.dropParked()
                if !keepingReceived {
                    // The messages received are dropped: their descriptors are closed now (as they are released),
                    // not kept until the call is.
                    locked.descriptors.waiting.removeAll()
                    locked.descriptors.held = 0
                }
                writeWaits = locked.writeWaitIDs
                locked.writeWaitIDs = []
                locked.endAfterSends = nil
            }
            return action
        }
        action.readWaiter?.resume(throwing: error)
        action.writeWaiter?.resume(throwing: error)
        parkedWaiter?.resume()
        // A writer waiting for room in the connection's write queue (its peer reads nothing) ends too: the caller's
        // deadline or cancel must end it, not only the connection's close.
        for id in writeWaits { self.connection.cancelWriteWait(id: id) }
    }

    // MARK: - WriteWaitOwner

    func writeWaitBegan(id: UInt64) -> Bool {
        self.state.withLock { locked in
            guard locked.machine.failure == nil else { return false }
            locked.writeWaitIDs.append(id)
            return true
        }
    }

    func writeWaitEnded(id: UInt64) {
        self.state.withLock { locked in
            locked.writeWaitIDs.removeAll { $0 == id }
        }
    }

    /// Queues `payload`, whose credit is taken, once the connection's write queue has room; an end asked for
    /// meanwhile (``finish(_:)``) goes after it (found by a review: it overtook the message, which the peer then
    /// dropped although the write returned success).
    nonisolated(nonsending) func sendWhenRoom(
        _ payload: ByteBuffer,
        descriptors: DuplicatedDescriptors?
    ) async throws {
        self.state.withLock { $0.sendsInProgress += 1 }
        do {
            if let descriptors {
                try await self.connection.sendCallFrame(
                    id: self.id,
                    .message(payload),
                    descriptors: descriptors.take(),
                    reservation: descriptors.reservation,
                    owner: self
                )
            } else {
                try await self.connection.sendCallMessage(id: self.id, payload, owner: self)
            }
        } catch is CancellationError where !Task.isCancelled {
            // The wait for room was ended by the call's failure (its deadline, the caller's cancel of the call, the
            // peer's end), not by a cancel of this task: the writer throws what the call failed with, as a wait for
            // credit does (found by a review: a deadline threw CancellationError here).
            self.sendEnded()
            throw self.state.withLock { $0.machine.failure } ?? CancellationError()
        } catch {
            self.sendEnded()
            throw error
        }
        self.sendEnded()
    }

    /// A send of ``sendWhenRoom(_:descriptors:)`` is over: the end that waited for the sends goes now, if it was the
    /// last.
    private func sendEnded() {
        let end = self.state.withLock { locked -> CallStatus? in
            locked.sendsInProgress -= 1
            guard locked.sendsInProgress == 0, locked.machine.failure == nil else { return nil }
            return locked.endAfterSends.take()
        }
        if let end { self.connection.writeCallControlFrame(id: self.id, .end(end)) }
    }

    /// Whether `error` is the refusal of this side's (the caller's) sends because the handler ended the call: the
    /// handler's end is then the call's outcome.
    func isRefusalByHandlerEnd(_ error: SocketIPCError) -> Bool {
        self.state.withLock { locked in
            guard locked.machine.inboundEnded, let refused = locked.machine.sendsRefusedError as? SocketIPCError
            else { return false }
            return refused.code == error.code && refused.message == error.message
        }
    }

    /// Bytes of messages held for the reader beyond the call's window (see ``CallStateMachine/heldBeyondWindow``).
    var heldBeyondWindow: Int { self.state.withLock { $0.machine.heldBeyondWindow } }

    /// Descriptors received with messages the reader has not taken yet.
    var heldDescriptors: Int { self.state.withLock { $0.descriptors.held } }

    /// Whether the call failed (cancelled, deadline passed, connection closed), and with what.
    var failure: (any Error)? { self.state.withLock { $0.machine.failure } }

    static func deadlineError(_ method: String) -> SocketIPCError {
        SocketIPCError(.deadlineExceeded, "the call '\(method)' did not complete before its deadline")
    }
}
