import NIOCore
import SocketIPCCore

// Typed calls on a framed connection: unary, server streaming, client streaming and bidirectional streaming.
extension Connection {
    /// Calls `method` with `request` and returns its response: a unary call.
    ///
    /// ```swift
    /// let value = try await connection.call(Get.self, "colour")
    /// ```
    ///
    /// Cancelling the calling task cancels the handler on the other side (a cancel frame) and throws
    /// `CancellationError`.
    /// - Parameters:
    ///   - method: The method, as declared by both sides.
    ///   - request: The request.
    ///   - options: The deadline and the codec; default none and JSON.
    /// - Returns: The handler's response.
    /// - Throws: ``ServiceError`` (the handler's own error); `SocketIPCError` with code `unknownMethod`,
    ///   `deadlineExceeded`, `invalidMessage` (a request that does not encode, a response that does not decode),
    ///   `remoteError` (the handler failed otherwise), `cancelled`,
    ///   `peerGoingAway`, `resourceExhausted`, `connectionClosed`, `messageTooLarge`; `CancellationError`.
    nonisolated(nonsending) public func call<Method: ServiceMethod>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions = CallOptions()
    ) async throws -> Method.Response {
        var neverSent = false
        return try await self.call(method, request, options: options, neverSent: &neverSent)
    }

    /// ``call(_:_:options:)``, telling whether a failed call never reached the peer (`neverSent`), so that a
    /// ``ServiceClient`` can make any call again that its server never saw.
    nonisolated(nonsending) package func call<Method: ServiceMethod>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions,
        neverSent: inout Bool
    ) async throws -> Method.Response {
        let (payload, found) = try DescriptorCoding.encodeOutgoing(request, of: Method.name, codec: options.codec, on: self)
        let descriptors = try await DescriptorCoding.duplicate(found, of: request, on: self)
        var refusedAtOpen = false
        do {
            return try await self.withOutgoingCall(
                Method.name, options: options, takesOneResponse: true, neverSent: &neverSent
            ) { call in
                try await call.sendRequest(payload, descriptors: descriptors)
                call.finish()
                self.recycleEncodingBuffer(payload)
                return try await Self.readSingleResponse(
                    of: call,
                    as: Method.Response.self,
                    codec: options.codec,
                    refusedAtOpen: &refusedAtOpen
                )
            }
        } catch {
            // Ended with "unavailable, refused" before any response: the peer took no new calls and started no
            // handler for this one (PROTOCOL.md, status 0x07), so the call had no effect there, as gRPC takes a stream
            // refused with REFUSED_STREAM for one that never reached the server. A plain "unavailable" promises
            // nothing: a method the server serves as a stream (called here as unary) may have run before its
            // shutdown ended it so (found by a review: a handler ran twice for one call).
            if refusedAtOpen { neverSent = true }
            throw error
        }
    }

    /// Calls `method` with `request` and hands its stream of responses to `body`: server streaming (a watch).
    ///
    /// ```swift
    /// try await connection.serverStreaming(Watch.self, "colour") { changes in
    ///     for try await change in changes { print(change) }
    /// }
    /// ```
    ///
    /// When `body` returns before the stream ended, the call is cancelled on the other side.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws, which includes what the stream throws (see ``ServiceStream``), and the errors of
    ///   ``call(_:_:options:)``.
    nonisolated(nonsending) public func serverStreaming<Method: ServiceMethod, Result: Sendable>(
        _ method: Method.Type,
        _ request: Method.Request,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStream<Method.Response>) async throws -> Result
    ) async throws -> Result {
        let (payload, found) = try DescriptorCoding.encodeOutgoing(request, of: Method.name, codec: options.codec, on: self)
        let descriptors = try await DescriptorCoding.duplicate(found, of: request, on: self)
        return try await self.withOutgoingCall(Method.name, options: options) { call in
            try await call.sendRequest(payload, descriptors: descriptors)
            call.finish()
            self.recycleEncodingBuffer(payload)
            return try await body(ServiceStream(call: call, codec: options.codec))
        }
    }

    /// Calls `method` with the requests `body` writes, and returns its one response: client streaming.
    ///
    /// The request stream ends (the caller's half-close) when `body` returns; then the handler's response is
    /// awaited. A handler may answer before it has read every request: a write then fails, and if `body` lets that
    /// error out, the call still returns the handler's response (or throws its error).
    /// - Returns: The handler's response.
    /// - Throws: What `body` throws (the call is then cancelled), and the errors of ``call(_:_:options:)``.
    nonisolated(nonsending) public func clientStreaming<Method: ServiceMethod>(
        _ method: Method.Type,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStreamWriter<Method.Request>) async throws -> Void
    ) async throws -> Method.Response {
        try await self.withOutgoingCall(Method.name, options: options, takesOneResponse: true) { call in
            do {
                try await body(ServiceStreamWriter(call: call, codec: options.codec))
            } catch let error as SocketIPCError where call.isRefusalByHandlerEnd(error) {
                // The handler answered (or failed) before reading every request, and ended the call: its answer is
                // the call's result, as a gRPC client's `SendMsg` returns `io.EOF` and `CloseAndRecv` the status
                // (found by a review: the response that had come was dropped for this write's error). The body's own
                // errors still end the call with them.
                _ = error
            }
            call.finish()
            return try await Self.readSingleResponse(of: call, as: Method.Response.self, codec: options.codec)
        }
    }

    /// Calls `method` with a stream of requests and a stream of responses both open at once: bidirectional
    /// streaming.
    ///
    /// `body` gets a writer for the requests and the stream of responses. The request stream ends (the caller's
    /// half-close) when `body` calls ``ServiceStreamWriter/finish()``, or when it returns; a handler that answers
    /// once it has read every request needs the first:
    ///
    /// ```swift
    /// let sums = try await connection.bidirectionalStreaming(Sum.self) { requests, responses in
    ///     try await requests.write(contentsOf: [1, 2, 3])
    ///     requests.finish()
    ///     var all: [Int] = []
    ///     for try await sum in responses { all.append(sum) }
    ///     return all
    /// }
    /// ```
    ///
    /// When `body` returns before the responses ended, the call is cancelled on the other side.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws, and the errors of ``call(_:_:options:)``.
    nonisolated(nonsending) public func bidirectionalStreaming<Method: ServiceMethod, Result: Sendable>(
        _ method: Method.Type,
        options: CallOptions = CallOptions(),
        _ body: (ServiceStreamWriter<Method.Request>, ServiceStream<Method.Response>) async throws -> Result
    ) async throws -> Result {
        try await self.withOutgoingCall(Method.name, options: options) { call in
            let result = try await body(
                ServiceStreamWriter(call: call, codec: options.codec),
                ServiceStream(call: call, codec: options.codec)
            )
            call.finish()
            return result
        }
    }

    // MARK: - Internals

    /// Opens a call, runs `body` with it, and makes sure it is over when `body` is: cancelled on the other side if
    /// the handler had not ended it, its deadline timer stopped, and the call no longer counted.
    /// - Parameter takesOneResponse: Whether the caller takes one response (a unary or client-streaming call): the
    ///   open says so (``CallOpen/takesOneResponse``), and a method that streams its responses refuses the call at
    ///   once, instead of leaving it to wait (found by a review: `socket-ipc call` of a watch waited for good).
    nonisolated(nonsending) func withOutgoingCall<Result>(
        _ method: String,
        options: CallOptions,
        takesOneResponse: Bool = false,
        _ body: (CallStream) async throws -> Result
    ) async throws -> Result {
        var neverSent = false
        return try await self.withOutgoingCall(
            method, options: options, takesOneResponse: takesOneResponse, neverSent: &neverSent, body)
    }

    /// ``withOutgoingCall(_:options:_:)``; when it throws, `neverSent` says whether nothing of the call reached the
    /// peer: it was refused before its open frame was queued (the connection closed or going away), or the
    /// connection closed before that frame left (still queued, or refused by the socket for good).
    nonisolated(nonsending) func withOutgoingCall<Result>(
        _ method: String,
        options: CallOptions,
        takesOneResponse: Bool = false,
        neverSent: inout Bool,
        _ body: (CallStream) async throws -> Result
    ) async throws -> Result {
        try Task.checkCancellation()
        guard !method.isEmpty else {
            // The protocol carries an empty name, but no handler can be registered for one (ServiceMethod.name).
            throw SocketIPCError(.invalidMessage, "the method name is empty; a method's name is 1 to 255 bytes of UTF-8")
        }
        guard method.utf8.count <= 255 else {
            // Cut to fit, it would name another method: refused before anything is sent.
            throw SocketIPCError(
                .invalidMessage,
                "the method name '\(method.prefix(40))…' is \(method.utf8.count) bytes of UTF-8; a call carries at most 255"
            )
        }
        let multiplexer = CallMultiplexer.of(self)
        let id: UInt32
        do {
            id = try self.startOutgoingCall()
        } catch {
            neverSent = true
            throw error
        }
        let call = CallStream(id: id, method: method, connection: self, isCaller: true)
        multiplexer.register(call)
        defer {
            multiplexer.remove(id)
            self.callEnded()
        }
        let openedAt: Int
        do {
            let open = CallOpen(
                method: method,
                timeoutNanoseconds: options.timeoutNanoseconds,
                flags: takesOneResponse ? CallOpen.takesOneResponse : 0
            )
            openedAt = try self.queueCallOpen(id: id, open)
        } catch {
            neverSent = true
            call.fail(error)
            throw error
        }
        let timer = options.timeout.map { timeout in
            self.scheduleCallTimer(in: max(timeout, .zero)) { call.cancel(.deadlineExceeded) }
        }
        defer { timer?.cancel() }
        do {
            let result = try await body(call)
            // `body` stopped listening before the handler ended the call: tell the handler's side.
            call.cancel(.cancelled, failing: Self.callOver(method))
            return result
        } catch {
            call.cancel(.cancelled, failing: Self.callOver(method))
            neverSent = self.neverSent(from: openedAt)
            // A deadline that passed is the reason, whatever the read or write it interrupted threw.
            if let failure = call.failure as? SocketIPCError, failure.code == .deadlineExceeded { throw failure }
            throw error
        }
    }

    /// What a stream or writer that outlives the body it was handed to (kept by another task) gets: not
    /// `CancellationError`, which says that the task using it was cancelled (found by a review).
    static func callOver(_ method: String) -> SocketIPCError {
        SocketIPCError(.invalidState, "the call '\(method)' is over: the body it was handed to has returned")
    }

    /// Reads exactly one response and the handler's end.
    nonisolated(nonsending) static func readSingleResponse<Response: Decodable & Sendable>(
        of call: CallStream,
        as type: Response.Type,
        codec: any MessageCodec
    ) async throws -> Response {
        var refusedAtOpen = false
        return try await self.readSingleResponse(of: call, as: type, codec: codec, refusedAtOpen: &refusedAtOpen)
    }

    /// ``readSingleResponse(of:as:codec:)``; `refusedAtOpen` tells whether the call ended, before any response, with
    /// status unavailable and the code that says the peer refused it at its open, its handler not started
    /// (``SocketIPCCore/CallStatus/refusedUnstarted``).
    nonisolated(nonsending) static func readSingleResponse<Response: Decodable & Sendable>(
        of call: CallStream,
        as type: Response.Type,
        codec: any MessageCodec,
        refusedAtOpen: inout Bool
    ) async throws -> Response {
        switch try await call.next() {
        case .end(let status):
            refusedAtOpen = status.refusedUnstarted
            throw status.error(codec: codec, method: call.method)
                ?? SocketIPCError(.invalidMessage, "the call '\(call.method)' ended without a response")
        case .message(let message, let descriptors):
            let response: Response
            do {
                response = try DescriptorCoding.decodesAwayFromTheLoop(message, readOn: call.connection)
                    ? await DescriptorCoding.decodeAwayFromTheLoop(
                        Response.self,
                        from: message,
                        descriptors: descriptors,
                        codec: codec
                    )
                    : DescriptorCoding.decode(Response.self, from: message, descriptors: descriptors, codec: codec)
            } catch {
                throw SocketIPCError(
                    .invalidMessage,
                    "the response of the call '\(call.method)' is not a \(Response.self): \(decodingErrorText(error))",
                    cause: error
                )
            }
            switch try await call.next() {
            case .end(let status):
                if let error = status.error(codec: codec, method: call.method) { throw error }
                return response
            case .message:
                throw SocketIPCError(.invalidMessage, "the call '\(call.method)' answered more than one response")
            }
        }
    }
}

extension CallStream {
    /// Sends the one request of a unary or server-streaming call. A handler that ended the call before the request
    /// went (a server that answers or refuses a call on its open alone) makes the send fail, but that is not this
    /// side's error: the handler's end, read next, is the call's result, as for a client-streaming call whose handler
    /// answers before reading every request (found by CI: a raw server's answer to a call made again after
    /// `unavailable` came before the request was queued, and the call failed with `invalidState`).
    nonisolated(nonsending) fileprivate func sendRequest(_ payload: ByteBuffer, descriptors: DuplicatedDescriptors?) async throws {
        do {
            try await self.sendWithoutWaiting(payload, descriptors: descriptors)
        } catch let error as SocketIPCError where self.isRefusalByHandlerEnd(error) {
            _ = error
        }
    }
}
