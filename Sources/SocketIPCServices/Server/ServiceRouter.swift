import NIOCore
import SocketIPCCore

/// The methods a server (or a client, for calls its server makes back) handles, by name, with one handler each.
///
/// ```swift
/// var router = ServiceRouter()
/// router.register(Get.self) { key, context in store[key] }
/// router.registerServerStreaming(Watch.self) { key, changes, context in
///     for await value in store.updates(of: key) { try await changes.write(value) }
/// }
/// let server = Server.service(configuration: .init(path: path), router: router)
/// ```
///
/// A call of a name that is not registered fails at the caller with `unknownMethod` (gRPC's `UNIMPLEMENTED`). A
/// handler runs in a task of its own, a child of the task that runs `Server.run()`; it is cancelled when the caller
/// cancels, when the call's deadline passes, and when the connection closes. What it throws reaches the caller: a
/// ``ServiceError`` as itself, anything else as a `SocketIPCError` with code `remoteError`.
public struct ServiceRouter: Sendable {
    /// A handler with its types erased: reads its requests from the call and writes its responses to it.
    typealias Handler = @Sendable (CallStream, ServiceContext, any MessageCodec) async throws -> Void

    /// A registered handler, whether it writes a stream of responses, and the largest request it takes
    /// (``ServiceMethod/maximumRequestSize``).
    struct Registered {
        var handler: Handler
        var streamsResponses: Bool
        var maximumRequestSize: Int?
    }

    /// By name, compared byte for byte (``MethodName``).
    var handlers: [MethodName: Registered] = [:]
    /// How requests and responses are encoded; default ``JSONCodec``. Callers must use the same.
    public var codec: any MessageCodec
    /// The most calls of one connection handled at once; default 100 (as
    /// `ConnectionOptions.maximumConcurrentRequests`). A call beyond it fails at the caller with `resourceExhausted`.
    /// Only the calls the peer opens count, not this side's own calls on the same connection. A call counts until its
    /// handler returns: the caller's cancel or deadline answers the caller at once and cancels the handler's task, but
    /// a handler that ignores cancellation keeps its place (its task still runs), and enough of them fill the
    /// connection's limit. Handlers that wait should wait cancellably (``ServiceContext/sleep(for:)``, `Task.sleep`,
    /// streams).
    public var maximumConcurrentCalls: Int = 100
    /// The most calls of one user id handled at once across all of its connections to the server (counted by the
    /// peer's `SO_PEERCRED` uid; peers whose credentials are unknown share one count); default 1,024. A call beyond it
    /// fails at the caller with `resourceExhausted`, and the connection goes on. Each call in progress holds its
    /// handler's task and the call's state (about 7 KB a call parked in a sleep, in a debug build), and the limits
    /// per connection (``maximumConcurrentCalls``) and per user on connections (1,024 by default) would allow one user
    /// 102,400 of them. Calls count as for ``maximumConcurrentCalls``: until the handler returns. Applies to a
    /// server's connections only (`Server.service`); a client's handlers of calls its server opens count only per
    /// connection.
    public var maximumConcurrentCallsPerUser: Int = 1_024
    /// Whether handlers run on their connection's event loop (as their task's executor preference); default
    /// `true`, as `ClientConfiguration.runsBodyOnEventLoop`.
    ///
    /// Then a call's frames are read, its handler runs, and its response is written on one thread, with no thread
    /// hop: a typed call costs about what a raw request does. A handler must then not block its thread (no blocking
    /// system calls, no long computation without `await`): it would stall every connection of that event loop.
    /// Turn this off for handlers that do, and they run on the global concurrent executor (where a stream's
    /// handler, reading or writing 128 messages without waiting, lets other tasks run). A request or stream
    /// message of 64 KiB or more is decoded on the global concurrent executor either way, since decoding costs CPU in
    /// proportion to what the peer sent.
    ///
    /// Handlers on the event loop run in tasks of their own, started there when their call opens, so they do not
    /// inherit the task-local values of the task that runs `Server.run()` (swift-service-lifecycle's graceful
    /// shutdown, as `cancelOnGracefulShutdown()` reads it; a tracing context). They still end with the server: its
    /// shutdown ends response streams (``endsResponseStreamsOnShutdown``), `Server.onGracefulShutdown(_:)` runs before
    /// it, and the end of the grace period cancels them. With this off, handlers are child tasks of `Server.run()`'s
    /// task and inherit its task-local values.
    public var runsHandlersOnEventLoop = true
    /// Whether a graceful shutdown of the server ends its response streams (server and bidirectional streaming)
    /// at once, with status `unavailable`, cancelling their handlers; default `true`.
    ///
    /// A watch has no end of its own: left open, it would hold the shutdown until the grace period ends. Ended at
    /// once, its caller learns that the server is going (`peerGoingAway`), and a ``ServiceClient/resubscribing(_:_:options:)``
    /// stream calls again on the next server. Unary and client-streaming calls in progress are not affected: they
    /// finish within the grace period. Turn this off to let response streams run until the grace period ends (or end
    /// them yourself from `Server.onGracefulShutdown(_:)`).
    public var endsResponseStreamsOnShutdown = true

    /// Creates an empty router.
    /// - Parameter codec: How requests and responses are encoded; default ``JSONCodec``.
    public init(codec: any MessageCodec = JSONCodec()) {
        self.codec = codec
    }

    /// The names of the methods registered.
    public var methods: [String] { self.handlers.keys.map(\.name).sorted() }

    /// Registers the handler of a unary method: one request, one response. Replaces an earlier handler of the same
    /// name.
    ///
    /// The handler runs once the request is in, without waiting for the caller's half-close (as gRPC runs a unary
    /// handler), so that a caller that never half-closes cannot keep its requests in the server's memory; a second
    /// request that came with the first fails the call with `invalidMessage`, a later one is ignored.
    public mutating func register<Method: ServiceMethod>(
        _ method: Method.Type,
        handler: @escaping @Sendable (Method.Request, ServiceContext) async throws -> Method.Response
    ) {
        self.handlers[MethodName(registering: Method.name)] = Registered(handler: { call, context, codec in
            let request = try await Self.readSingleRequest(of: call, as: Method.Request.self, codec: codec)
            let response = try await handler(request, context)
            let (payload, found) = try Self.encode(response, codec: codec, on: call, method: Method.name)
            let descriptors = try await DescriptorCoding.duplicate(found, of: response, on: call.connection)
            try await call.send(payload, descriptors: descriptors)
            call.connection.recycleEncodingBuffer(payload)
        }, streamsResponses: false, maximumRequestSize: Method.maximumRequestSize)
    }

    /// Registers the handler of a server-streaming method: one request, a stream of responses written to the
    /// writer (a watch, a subscription). The call ends when the handler returns.
    public mutating func registerServerStreaming<Method: ServiceMethod>(
        _ method: Method.Type,
        handler: @escaping @Sendable (Method.Request, ServiceStreamWriter<Method.Response>, ServiceContext) async throws
            -> Void
    ) {
        self.handlers[MethodName(registering: Method.name)] = Registered(handler: { call, context, codec in
            let request = try await Self.readSingleRequest(of: call, as: Method.Request.self, codec: codec)
            try await handler(request, ServiceStreamWriter(call: call, codec: codec), context)
        }, streamsResponses: true, maximumRequestSize: Method.maximumRequestSize)
    }

    /// Registers the handler of a client-streaming method: a stream of requests, one response.
    public mutating func registerClientStreaming<Method: ServiceMethod>(
        _ method: Method.Type,
        handler: @escaping @Sendable (ServiceStream<Method.Request>, ServiceContext) async throws -> Method.Response
    ) {
        self.handlers[MethodName(registering: Method.name)] = Registered(handler: { call, context, codec in
            let response = try await handler(ServiceStream(call: call, codec: codec), context)
            let (payload, found) = try Self.encode(response, codec: codec, on: call, method: Method.name)
            let descriptors = try await DescriptorCoding.duplicate(found, of: response, on: call.connection)
            try await call.send(payload, descriptors: descriptors)
            call.connection.recycleEncodingBuffer(payload)
        }, streamsResponses: false, maximumRequestSize: Method.maximumRequestSize)
    }

    /// Registers the handler of a bidirectional-streaming method: a stream of requests and a stream of responses,
    /// both open at once. The call ends when the handler returns.
    public mutating func registerBidirectionalStreaming<Method: ServiceMethod>(
        _ method: Method.Type,
        handler: @escaping @Sendable (ServiceStream<Method.Request>, ServiceStreamWriter<Method.Response>, ServiceContext)
            async throws -> Void
    ) {
        self.handlers[MethodName(registering: Method.name)] = Registered(handler: { call, context, codec in
            try await handler(ServiceStream(call: call, codec: codec), ServiceStreamWriter(call: call, codec: codec), context)
        }, streamsResponses: true, maximumRequestSize: Method.maximumRequestSize)
    }

    // MARK: - Internals

    /// Reads the one request of a unary or server-streaming call; does not wait for the caller's half-close, as
    /// gRPC runs a unary handler once its request is in: a caller that never half-closes would otherwise keep its
    /// request (up to the maximum message size, on each of its calls) in the server's memory for as long as it
    /// likes. A second request already received is an error; one that comes later is dropped as it arrives.
    static func readSingleRequest<Request: Decodable & Sendable>(
        of call: CallStream,
        as type: Request.Type,
        codec: any MessageCodec
    ) async throws -> Request {
        guard case .message(let message, let descriptors) = try await call.next() else {
            throw SocketIPCError(.invalidMessage, "the call '\(call.method)' sent no request")
        }
        let request: Request
        do {
            request = try DescriptorCoding.decodesAwayFromTheLoop(message, readOn: call.connection)
                ? await DescriptorCoding.decodeAwayFromTheLoop(
                    Request.self,
                    from: message,
                    descriptors: descriptors,
                    codec: codec
                )
                : DescriptorCoding.decode(Request.self, from: message, descriptors: descriptors, codec: codec)
        } catch {
            throw SocketIPCError(
                .invalidMessage,
                "the request of '\(call.method)' is not a \(Request.self): \(decodingErrorText(error))",
                cause: error
            )
        }
        // Nothing more is read: a later request is dropped as it arrives, not kept for the handler's whole life.
        if call.stopReceiving() {
            throw SocketIPCError(.invalidMessage, "the call '\(call.method)' sent more than one request")
        }
        return request
    }

    static func encode<Value: Encodable>(
        _ value: Value,
        codec: any MessageCodec,
        on call: CallStream,
        method: String
    ) throws -> (ByteBuffer, [Int32]) {
        do {
            return try DescriptorCoding.encode(value, codec: codec, on: call.connection)
        } catch {
            throw SocketIPCError(.remoteError, "the response of '\(method)' could not be encoded: \(error)", cause: error)
        }
    }
}

/// A method's name as the router keys it: equal to another only if their UTF-8 bytes are (PROTOCOL.md: names are
/// matched byte for byte), where Swift's `String` takes canonically equivalent names (a precomposed `é` and `e` with
/// a combining accent) for one.
struct MethodName: Hashable, Sendable {
    let name: String

    /// A name of at most 255 bytes of UTF-8, all a call open can carry: registering a longer one is a programming
    /// error (no call could reach it), and traps; a name read from the wire always fits.
    init(_ name: String) {
        precondition(name.utf8.count <= 255, "a method's name is at most 255 bytes of UTF-8 (PROTOCOL.md, call open): \(name)")
        self.name = name
    }

    /// A name a handler is registered for: 1 to 255 bytes of UTF-8 (``ServiceMethod/name``). An empty one is a
    /// programming error, as a long one is, and traps: callers refuse to send it.
    init(registering name: String) {
        precondition(!name.isEmpty, "a method's name is 1 to 255 bytes of UTF-8: this one is empty")
        self.init(name)
    }

    static func == (lhs: MethodName, rhs: MethodName) -> Bool {
        lhs.name.utf8.elementsEqual(rhs.name.utf8)
    }

    func hash(into hasher: inout Hasher) {
        for byte in self.name.utf8 { hasher.combine(byte) }
    }
}
