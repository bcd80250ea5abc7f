import NIOCore
import SocketIPCCore
import Synchronization

// Calls through a ServiceClient: each waits for a connection, and a unary call of an idempotent method is repeated on
// the next connection when its own was lost.
extension ServiceClient {
    /// Calls `method` with `request` and returns its response (a unary call), once a connection is ready.
    ///
    /// If the connection is lost before the response comes, a method that declares itself idempotent is called
    /// again on the next connection (up to ``ServiceClientConfiguration/maximumRetries`` times); any other fails,
    /// unless nothing of the call reached the server or its handler: the connection had closed or said going-away
    /// before the call was written, the socket refused its first byte (`EPIPE`: the server had died before the
    /// client noticed), or the server refused the call at its open as going away, saying that it started no handler
    /// for it (status unavailable with the code `refused`; a plain unavailable may end a method the server serves
    /// as a stream after it ran). Such a call is made again whatever its method, within the same bound, as gRPC
    /// retries transparently an RPC that never left the client or that the server refused with `REFUSED_STREAM`.
    /// Either kind of call that the server refuses as going away while it keeps the connection open, without having
    /// said going-away on it, is made again after ``ServiceClientConfiguration/backoff``, on that connection if it is
    /// still open then (as gRPC retries `UNAVAILABLE`), instead of waiting for a new connection that may never come.
    /// The call's ``CallOptions/timeout`` covers all of it: the waits for a connection, every attempt, and the waits
    /// between them, as gRPC's deadline covers its retries.
    /// - Throws: What ``SocketIPCRuntime/Connection/call(_:_:options:)`` throws; the last connection error (or
    ///   `timedOut`) when no connection was ready within ``ServiceClientConfiguration/waitForConnectionTimeout`` or
    ///   the call's timeout; `deadlineExceeded` when the timeout passes during a retry; `invalidState` once the
    ///   client is shut down.
    public func call<Method: ServiceMethod>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions = CallOptions()
    ) async throws -> Method.Response {
        var retries = 0
        var lost: Connection?
        // One deadline for all the attempts and the waits between them, as gRPC's deadline covers its retries (found
        // by a review: each attempt had the whole timeout again, and a call with 2 s failed after 6 s).
        let deadline = options.timeout.map { ContinuousClock.now.advanced(by: $0) }
        while true {
            var attempt = options
            if let deadline {
                let left = ContinuousClock.now.duration(to: deadline)
                guard left > .zero else { throw CallStream.deadlineError(Method.name) }
                attempt.timeout = left
            }
            let connection: Connection
            do {
                connection = try await self.readyConnection(excluding: lost, timeout: attempt.timeout)
            } catch where retries > 0 && deadline.map({ $0 <= .now }) ?? false {
                throw CallStream.deadlineError(Method.name)
            }
            var neverSent = false
            do {
                return try await connection.call(method, request, options: attempt, neverSent: &neverSent)
            } catch let error as SocketIPCError
                where (Method.isIdempotent || neverSent) && retries < self.configuration.maximumRetries
                && Self.lostBeforeAnswer(error)
            {
                retries += 1
                lost = connection
                if connection.isOpen, connection.peerGoingAwayError == nil {
                    // Refused, not lost: the server may serve again on this connection (see the resubscribing
                    // stream). The wait is short and bounded by maximumRetries, so it watches only the client's
                    // shutdown, not the connection's close (a close callback would stay with SwiftNIO until then).
                    var delay = self.configuration.backoff.delay(beforeRetry: retries, random: .random(in: 0..<1))
                    if let deadline { delay = min(delay, max(ContinuousClock.now.duration(to: deadline), .zero)) }
                    await self.shutdownRequested.wait(upTo: delay)
                    if connection.isOpen { lost = nil }
                }
                self.logger.debug(
                    neverSent ? "retrying a call that never reached the server or its handler" : "retrying an idempotent call",
                    metadata: [
                        "method": "\(Method.name)", "error": "\(errorText(error))", "retry": "\(retries)",
                        "connection": "\(lost == nil ? "the same" : "a new one")",
                    ]
                )
            }
        }
    }

    /// Calls `method` (server streaming) once a connection is ready; see
    /// ``SocketIPCRuntime/Connection/serverStreaming(_:_:options:_:)``.
    /// Not repeated when the connection is lost: ``resubscribing(_:_:options:)`` is the stream that is. The call's
    /// timeout covers its wait for a connection too.
    nonisolated(nonsending) public func serverStreaming<Method: ServiceMethod, Result: Sendable>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStream<Method.Response>) async throws -> Result
    ) async throws -> Result {
        let (connection, left) = try await self.readyConnection(for: Method.name, options: options)
        return try await connection.serverStreaming(method, request, options: left, body)
    }

    /// Calls `method` (client streaming) once a connection is ready; see
    /// ``SocketIPCRuntime/Connection/clientStreaming(_:options:_:)``. The call's timeout covers its wait for a
    /// connection too.
    nonisolated(nonsending) public func clientStreaming<Method: ServiceMethod>(
        _ method: Method.Type,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStreamWriter<Method.Request>) async throws -> Void
    ) async throws -> Method.Response {
        let (connection, left) = try await self.readyConnection(for: Method.name, options: options)
        return try await connection.clientStreaming(method, options: left, body)
    }

    /// Calls `method` (bidirectional streaming) once a connection is ready; see
    /// ``SocketIPCRuntime/Connection/bidirectionalStreaming(_:options:_:)``. The call's timeout covers its wait for
    /// a connection too.
    nonisolated(nonsending) public func bidirectionalStreaming<Method: ServiceMethod, Result: Sendable>(
        _ method: Method.Type,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStreamWriter<Method.Request>, ServiceStream<Method.Response>) async throws -> Result
    ) async throws -> Result {
        let (connection, left) = try await self.readyConnection(for: Method.name, options: options)
        return try await connection.bidirectionalStreaming(method, options: left, body)
    }

    /// A server stream that outlives connections: it calls `method` with `request`, yields what comes, and when the
    /// connection is lost (the server restarts) calls it again on the next one, as a watcher re-subscribes. A call
    /// the server refuses as going away (status unavailable) while it keeps the connection open, without having said
    /// going-away on it, is made again after ``ServiceClientConfiguration/backoff``, on that connection if it is still
    /// open then. While there is no server it waits as long as the client runs
    /// (``ServiceClientConfiguration/waitForConnectionTimeout`` bounds calls, not this stream). It ends when the
    /// handler ends the stream, or when the client shuts down; it throws the handler's error (a
    /// ``ServiceError``, `unknownMethod`, …). Elements sent while no connection was up are not seen: a watch that
    /// must not miss changes starts with the current value (as a `kv.watch` that yields it first).
    ///
    /// It reads from the server only as fast as it is iterated (one element ahead), so the stream's credit holds the
    /// server back for a slow consumer: the server is at most the call's credit window (64 KiB of elements) ahead of
    /// it, and what that window holds when the connection is lost is still handed out, in order, before the stream
    /// calls again. After ``shutdown()`` nothing more is handed out, and the stream ends. Stopping the iteration (or
    /// cancelling its task) cancels the call.
    public func resubscribing<Method: ServiceMethod>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions = CallOptions()
    ) -> ResubscribingStream<Method.Response> {
        let (elements, continuation) = AsyncThrowingStream.makeStream(of: Method.Response.self)
        let (demand, demandContinuation) = AsyncStream.makeStream(of: Void.self)
        let task = Task {
            var demandIterator = demand.makeAsyncIterator()
            var hasDemand = false
            var lost: Connection?
            var refusals = 0
            var refusedOn: Connection?
            var refusedOnClosed = OneShotSignal()
            while !Task.isCancelled {
                do {
                    // A watch waits for its server as long as the client runs, not just waitForConnectionTimeout.
                    let connection = try await self.readyConnection(excluding: lost, timeout: nil, bounded: false)
                    if connection !== refusedOn { refusals = 0 }
                    lost = connection
                    let ended = try await connection.serverStreaming(method, request, options: options) { responses in
                        var iterator = responses.makeAsyncIterator()
                        while true {
                            if !hasDemand {
                                // The consumer asks for each element before it is read from the server.
                                guard await demandIterator.next() != nil else { return false }
                                hasDemand = true
                            }
                            guard let response = try await iterator.next() else { return true }
                            // After shutdown() nothing more is handed out, also not what the call's window still
                            // holds (found by a review: a slow consumer got 245 elements in 5 s after shutdown).
                            if self.shutdownRequested.hasFired { return true }
                            hasDemand = false
                            refusals = 0
                            continuation.yield(response)
                        }
                    }
                    continuation.finish()
                    _ = ended
                    return
                } catch let error as SocketIPCError where Self.lostBeforeAnswer(error) {
                    if let connection = lost, connection.isOpen, connection.peerGoingAwayError == nil {
                        // The server refused the call as going away ("unavailable") but keeps the connection without
                        // having said going-away on it (a SocketIPC server says it first when it shuts down, and the
                        // next connection is then the one to wait for): it may serve again, as another
                        // implementation's passing trouble would. Call again after a backoff, on this connection if
                        // it is still open, as gRPC retries UNAVAILABLE, instead of waiting for a new connection that
                        // may never come. The wait ends early when the connection closes or the client shuts down.
                        refusals += 1
                        if connection !== refusedOn {
                            // One close callback per connection: SwiftNIO keeps each until the close.
                            refusedOn = connection
                            let closed = OneShotSignal()
                            connection.whenClosed { closed.fire() }
                            refusedOnClosed = closed
                        }
                        let delay = self.configuration.backoff.delay(beforeRetry: refusals, random: .random(in: 0..<1))
                        await self.backOff(delay, orUntil: refusedOnClosed)
                        if connection.isOpen { lost = nil }
                    }
                    continue
                } catch let error as SocketIPCError where error.code == .invalidState && self.isShutDown {
                    // The client shut down: the stream ends, as documented, without an error.
                    continuation.finish()
                    return
                } catch {
                    continuation.finish(throwing: error is CancellationError ? nil : error)
                    return
                }
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in
            task.cancel()
            demandContinuation.finish()
        }
        return ResubscribingStream(elements: elements, demand: demandContinuation)
    }

    /// Waits for `delay`, or less: until `closed` fires (the connection closed), the client shuts down or the task
    /// is cancelled.
    func backOff(_ delay: Duration, orUntil closed: OneShotSignal) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.shutdownRequested.wait(upTo: delay) }
            group.addTask { await closed.wait(upTo: delay) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Whether a call failed because its connection went away before it was answered.
    static func lostBeforeAnswer(_ error: SocketIPCError) -> Bool {
        switch error.code {
        case .connectionClosed, .peerGoingAway, .peerNotResponding: true
        default: false
        }
    }

    // MARK: - Waiting for a connection

    /// A ready connection for a call of `method`, and the call's options with what is left of its timeout: the
    /// timeout counts from when the call is made, so it covers the wait for a connection too, as a gRPC deadline does.
    /// - Throws: As ``readyConnection(excluding:timeout:bounded:)``; `deadlineExceeded` if nothing is left.
    func readyConnection(for method: String, options: CallOptions) async throws -> (Connection, CallOptions) {
        guard let timeout = options.timeout else {
            return (try await self.readyConnection(excluding: nil, timeout: nil), options)
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let connection = try await self.readyConnection(excluding: nil, timeout: timeout)
        var left = options
        left.timeout = ContinuousClock.now.duration(to: deadline)
        guard left.timeout! > .zero else { throw CallStream.deadlineError(method) }
        return (connection, left)
    }

    /// A connection that is ready (and not `excluding`, one the caller saw lost), waiting for one up to the
    /// configured time, or `timeout` if shorter.
    func readyConnection(excluding: Connection?, timeout: Duration?, bounded: Bool = true) async throws -> Connection {
        var excluding = excluding
        while true {
            let connection = try await self.waitForConnection(excluding: excluding, timeout: timeout, bounded: bounded)
            // One whose server said going-away takes no new calls: the next connection is on its way.
            if connection.isOpen && !connection.hasUsedAllIDs && connection.peerGoingAwayError == nil { return connection }
            if connection.hasUsedAllIDs {
                // It has numbered all the calls it can, and would stay open, going away, while its calls last (a watch
                // may last for ever): closed, so that the client connects anew and its streams resubscribe there, as
                // after a loss (found by a review: every new call failed on it).
                connection.close()
            }
            excluding = connection
        }
    }

    private func waitForConnection(excluding: Connection?, timeout: Duration?, bounded: Bool) async throws -> Connection {
        // The common case, a connection ready now, makes no timer: a cancelled `Task.sleep` keeps its timer until the
        // deadline, so a timer task per call held memory for waitForConnectionTimeout (30 s) after each call.
        if let ready = self.machine.withLock({ $0.readyConnection(excluding: excluding) }) { return ready }
        let id = self.nextWaiterID.wrappingAdd(1, ordering: .relaxed).newValue
        let limit = min(timeout ?? self.configuration.waitForConnectionTimeout, self.configuration.waitForConnectionTimeout)
        let timer = bounded ? Task {
            try await Task.sleep(for: limit.asWait)
            let waiter = self.machine.withLock { $0.removeWaiter(id: id) }
            waiter?.resume(throwing: self.noConnectionError(after: limit))
        } : nil
        defer { timer?.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Connection, any Error>) in
                let action = self.machine.withLock {
                    $0.waitForConnection(id: id, waiter: continuation, excluding: excluding)
                }
                switch action {
                case .ready(let connection): continuation.resume(returning: connection)
                case .fail(let error): continuation.resume(throwing: error)
                case .wait:
                    if Task.isCancelled {
                        self.machine.withLock { $0.removeWaiter(id: id) }?.resume(throwing: CancellationError())
                    }
                }
            }
        } onCancel: {
            self.machine.withLock { $0.removeWaiter(id: id) }?.resume(throwing: CancellationError())
        }
    }

    /// The error of a call that found no connection in time: the last attempt's error, if there was one.
    private func noConnectionError(after limit: Duration) -> SocketIPCError {
        let (state, lastConnectError) = self.machine.withLock { ($0.state, $0.lastConnectError) }
        return switch state {
        case .waiting(_, let error):
            SocketIPCError(
                error.code,
                "no connection to \(self.path) within \(limit.roundedText): \(error.message)",
                path: self.path,
                cause: error
            )
        case .idle:
            // The common mistake: nothing connects until run() runs (found by a review: the docs' own example).
            SocketIPCError(
                .timedOut,
                "no connection to \(self.path) within \(limit.roundedText): the client is not running (call run(), "
                    + "or add it to a ServiceGroup)",
                path: self.path
            )
        default:
            // Connecting again: the last attempt's error says why there was none (found by a review: "no connection
            // within 30 s" without the "sent no hello within 10 s" of every attempt).
            SocketIPCError(
                .timedOut,
                "no connection to \(self.path) within \(limit.roundedText)"
                    + (lastConnectError.map { ": \($0.message)" } ?? ""),
                path: self.path,
                cause: lastConnectError
            )
        }
    }
}
