import NIOCore
import SocketIPCCore

// The handler's side of a call: opening it, running its handler against its deadline and the caller's cancel, and
// ending it with the handler's status.
extension CallMultiplexer {
    /// The peer opened call `id`: start its handler, or answer at once why not.
    func open(_ open: CallOpen, id: UInt32, on connection: Connection) -> SocketIPCError? {
        if self.isOpen(id) {
            return SocketIPCError(.protocolViolation, "the peer opened call \(id), which is already open")
        }
        // Names are matched byte for byte (PROTOCOL.md, MethodName); a name that is not UTF-8 matches none.
        guard let router = self.router, open.methodIsValidUTF8,
            let registered = router.handlers[MethodName(open.method)]
        else {
            let name = open.methodIsValidUTF8 ? "'\(open.method)'" : "'\(open.method)' (not UTF-8)"
            let status = CallStatus(code: .unknownMethod, message: "no method \(name) is served here")
            connection.queueCallControlFrame(id: id, .end(status))
            return nil
        }
        // A caller that takes one response, of a method that streams them: the call could only wait for the stream's
        // end, or fail at its second response (found by a review: `socket-ipc call` of a watch waited for good).
        if open.flags & CallOpen.takesOneResponse != 0, registered.streamsResponses {
            let status = CallStatus(
                code: .invalidMessage,
                message: "the method '\(open.method)' streams its responses: call it as a streaming call "
                    + "(socket-ipc watch), not for one response"
            )
            connection.queueCallControlFrame(id: id, .end(status))
            return nil
        }
        guard self.incomingCount < router.maximumConcurrentCalls else {
            let status = CallStatus(
                code: .resourceExhausted,
                message: "\(router.maximumConcurrentCalls) calls are already in progress on this connection"
            )
            connection.queueCallControlFrame(id: id, .end(status))
            return nil
        }
        // A peer that cancels its calls faster than its allowance (Rapid Reset, CVE-2023-44487) gets no new handler
        // for a while: refused at once, as beyond the concurrency limit.
        if let refusal = connection.callOpenRefusal() {
            connection.queueCallControlFrame(id: id, .end(CallStatus(code: .resourceExhausted, message: refusal)))
            return nil
        }
        // Calls of one user across its connections: each holds a handler's task and state (a review's 20,000 calls
        // parked in `demo.sleep`, 100 on each of 200 connections, held 142 MB of a debug build's server; the limit
        // per user on connections allows 1,024 of them).
        guard connection.beginUserCall(limit: router.maximumConcurrentCallsPerUser) else {
            let status = CallStatus(
                code: .resourceExhausted,
                message: "\(router.maximumConcurrentCallsPerUser) calls of this user are already in progress on this server"
            )
            connection.queueCallControlFrame(id: id, .end(status))
            return nil
        }
        let call = CallStream(
            id: id,
            method: open.method,
            connection: connection,
            isCaller: false,
            streamsResponses: registered.streamsResponses,
            maximumRequestSize: registered.maximumRequestSize
        )
        // Registered before it counts as started: a shutdown that begins meanwhile either refuses it below or finds it
        // among the calls it ends (found by a review: a stream registered after the shutdown had taken its list of
        // calls was not ended, and the shutdown waited out its whole grace period).
        self.register(call)
        do {
            try connection.startIncomingCall()
        } catch {
            self.remove(id)
            connection.userCallEnded()
            // Marked as refused unstarted: the caller may make the call again on the next server, whatever its method.
            let status = CallStatus(
                code: .unavailable,
                errorCode: CallStatus.refusedUnstarted,
                message: "the server is going away and takes no new calls"
            )
            connection.queueCallControlFrame(id: id, .end(status))
            return nil
        }
        let handler = registered.handler
        let deadline: ContinuousClock.Instant? =
            open.timeoutNanoseconds == 0
            ? nil : .now.advanced(by: .nanoseconds(Int64(clamping: open.timeoutNanoseconds)))
        let context = ServiceContext(method: open.method, connection: connection, deadline: deadline)
        let codec = router.codec
        connection.runHandlerJob(onEventLoop: router.runsHandlersOnEventLoop) {
            await Self.run(handler, call: call, context: context, codec: codec)
            self.remove(id)
            connection.userCallEnded()
            connection.callEnded()
        }
        return nil
    }

    /// Runs `handler` until it returns, the caller cancels, the deadline passes or the connection closes; then ends
    /// the call with the status that says which (nothing when the caller is gone).
    static func run(
        _ handler: @escaping ServiceRouter.Handler,
        call: CallStream,
        context: ServiceContext,
        codec: any MessageCodec
    ) async {
        // A deadline that passed before the handler starts (a timeout shorter than the way here) stops the call at
        // once, as gRPC answers DEADLINE_EXCEEDED without running the handler: the handler would otherwise finish
        // before the timer below could fire, and the caller would get an answer after its deadline.
        if let deadline = context.deadline, deadline <= .now {
            call.stopHandler(.deadlineExceeded, failing: CallStream.deadlineError(context.method))
            // Unless something stopped the call first (the caller's cancel, read with the open: then nothing is sent).
            Self.end(call, status: CallStatus(code: .deadlineExceeded, message: "the call's deadline passed"))
            return
        }
        // The deadline is a timer on the connection's event loop, not a task of its own.
        let deadlineTimer = context.deadline.map { deadline in
            call.connection.scheduleCallTimer(in: ContinuousClock.now.duration(to: deadline)) {
                call.stopHandler(.deadlineExceeded, failing: CallStream.deadlineError(context.method))
            }
        }
        defer { deadlineTimer?.cancel() }
        // The handler runs in this task, which whatever stops the call first (the caller's cancel, the deadline, the
        // connection's close, the server's shutdown) cancels; so does this task's own cancellation.
        var status = CallStatus.ok
        await call.runStoppable {
            do {
                try await handler(call, context, codec)
            } catch {
                status = CallStatus.from(error, codec: codec)
            }
            // A handler that returns normally once cancelled (a `for await` loop ends quietly) did not complete its
            // call: the caller must not take the end of its stream for the stream's natural end.
            if Task.isCancelled, status.code == .ok {
                status = CallStatus(code: .cancelled, message: "the handler was cancelled")
            }
        }
        Self.end(call, status: status)
        // A last message parked for credit (strict credit), and the end behind it, go once the caller gives that
        // credit: the call stays registered (and counted) until then, or until it fails.
        await call.waitUntilParkedSent()
    }

    /// Ends `call` as what stopped it first says: with `status` (the handler's own) if the handler ended first, else
    /// with the status of what stopped it, or with nothing when the caller is gone or no longer listens.
    private static func end(_ call: CallStream, status: CallStatus) {
        switch call.stopReason {
        case .finished, nil:
            // The handler ended first (or was cancelled by its server's shutdown): its own status.
            call.finishAfterStop(Self.fitting(status, within: call.connection.maximumMessageSize))
        case .deadlineExceeded:
            call.finishAfterStop(CallStatus(code: .deadlineExceeded, message: "the call's deadline passed"))
        case .serverGoingAway:
            // The caller may call again on the next server: a ServiceClient's resubscribing stream does.
            call.finishAfterStop(CallStatus(code: .unavailable, message: "the server is shutting down"))
        case .heldBeyondWindows:
            call.finishAfterStop(CallStatus(code: .resourceExhausted, message: CallMultiplexer.heldBeyondWindowsText))
        case .heldTooManyDescriptors:
            call.finishAfterStop(CallStatus(code: .resourceExhausted, message: CallMultiplexer.heldDescriptorsText))
        case .requestTooLarge(let size, let limit):
            call.finishAfterStop(CallStatus(code: .invalidMessage, message: CallStream.requestTooLargeText(size, limit, call.method)))
        case .cancelledByCaller, .connectionClosed:
            // The caller is gone or no longer listening: nothing to send.
            break
        }
    }
}

extension CallMultiplexer {
    /// `status`, without its details (and with its message cut) if its end frame would exceed `limit` bytes, the
    /// maximum message size: the caller refuses a larger frame by closing the connection, which would fail its other
    /// calls too (found by a review: a `ServiceError` with 70 KB of details under a 64 KiB maximum did).
    static func fitting(_ status: CallStatus, within limit: Int) -> CallStatus {
        // The end frame's payload: the code, and the error code, message and details each after its length.
        let overhead = 16
        guard overhead + status.errorCode.utf8.count + status.message.utf8.count + status.details.readableBytes > limit
        else { return status }
        var fitted = status
        let dropped = fitted.details.readableBytes
        fitted.details = ByteBuffer()
        if dropped > 0 {
            fitted.message += " (its \(dropped) bytes of details left out: above the maximum message size)"
        }
        fitted.message = fitted.message.prefix(utf8Bytes: max(0, limit - overhead - fitted.errorCode.utf8.count))
        return fitted
    }

    func isOpen(_ id: UInt32) -> Bool {
        self.lookUp(id) != nil
    }
}
