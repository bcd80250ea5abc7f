import NIOCore
import SocketIPCCore

/// What one side of a framed connection does with what the peer sends: one-way messages and requests.
///
/// A server makes one handler per connection (see ``Server/framed(configuration:logger:onServerRunning:makeHandler:)``); a client
/// passes one to ``Client/connect(to:configuration:handler:logger:)``. Every method is called on the connection's event
/// loop, one at a time, in the order the frames arrived, so a handler may keep mutable state without locks, and it
/// must not block. To do slow or `async` work, answer a request with ``Reply/complete(_:)``, which runs it in a
/// child task that is cancelled when the connection closes (and, on a server, when its shutdown's grace period
/// ends); ``AsyncRequestHandler`` does that for you. A ``Reply`` may also be completed later from any thread.
public protocol ConnectionHandler {
    /// Called once, before any message of the connection.
    mutating func connectionDidOpen(_ connection: Connection)
    /// Called for each one-way message.
    ///
    /// `message` is a slice of the buffer it was read into (up to 1 MiB), which it keeps alive: a handler that keeps
    /// messages beyond this call, in a queue say, should keep copies (`ByteBuffer(bytes: message.readableBytesView)`),
    /// or a peer that sends each small message in a read of its own makes it hold a read buffer per message. Requests
    /// are handed out apart from a read buffer much larger than themselves, since they wait for their answers.
    mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection)
    /// Called for each request. Complete `reply` once, now or later, from any thread (later completions are ignored).
    ///
    /// While ``ConnectionOptions/maximumConcurrentRequests`` requests of the connection are unanswered (100 by
    /// default), no further request is handed out and the connection reads nothing more from the peer; the next
    /// answer lets it go on. A reply never completed therefore holds one of those places until the connection closes.
    mutating func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection)
    /// Called for each one-way message that carries file descriptors (``Connection/send(_:descriptors:)``); only on a
    /// connection whose ``ConnectionOptions/maximumDescriptorsPerMessage`` is above 0. Take the descriptors to keep
    /// them; those not taken are closed once `descriptors` is released.
    mutating func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection)
    /// Called for each request that carries file descriptors (`Connection.request(_:descriptors:timeout:)`), as
    /// ``didReceiveRequest(_:reply:on:)-(ByteBuffer,_,_)`` otherwise. Take the descriptors to keep them; those not taken are closed
    /// once `descriptors` is released.
    mutating func didReceiveRequest(
        _ request: ByteBuffer,
        descriptors: ReceivedDescriptors,
        reply: Reply,
        on connection: Connection
    )
    /// Called for each one-way message whose payload came in sealed shared memory (PROTOCOL.md "Shared payloads"),
    /// with the memory mapped read-only, so that the bytes are not copied at all. Implement it to ask for that form;
    /// the default copies the bytes into a buffer once and calls ``didReceiveMessage(_:on:)-(ByteBuffer,_)``.
    mutating func didReceiveMessage(_ message: MappedPayload, on connection: Connection)
    /// Called for each request whose payload came in sealed shared memory, mapped read-only, as
    /// ``didReceiveMessage(_:on:)-(MappedPayload,_)`` is for messages; the default copies the bytes into a buffer
    /// once and calls ``didReceiveRequest(_:reply:on:)-(ByteBuffer,_,_)``.
    mutating func didReceiveRequest(_ request: MappedPayload, reply: Reply, on connection: Connection)
    /// Called once when the connection has closed; `error` says why, `nil` for an orderly close.
    mutating func connectionDidClose(_ connection: Connection, error: SocketIPCError?)
}

extension ConnectionHandler {
    /// Does nothing.
    public mutating func connectionDidOpen(_ connection: Connection) {}
    /// Drops the message.
    public mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {}
    /// Answers with an error reply: this side takes no requests.
    public mutating func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.fail(SocketIPCError(.remoteError, "this peer does not answer requests"))
    }
    /// Does nothing.
    public mutating func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {}
    /// Closes the descriptors and hands the message to ``didReceiveMessage(_:on:)-(ByteBuffer,_)``.
    public mutating func didReceiveMessage(
        _ message: ByteBuffer,
        descriptors: ReceivedDescriptors,
        on connection: Connection
    ) {
        descriptors.close()
        self.didReceiveMessage(message, on: connection)
    }
    /// Closes the descriptors and hands the request to ``didReceiveRequest(_:reply:on:)-(ByteBuffer,_,_)``.
    public mutating func didReceiveRequest(
        _ request: ByteBuffer,
        descriptors: ReceivedDescriptors,
        reply: Reply,
        on connection: Connection
    ) {
        descriptors.close()
        self.didReceiveRequest(request, reply: reply, on: connection)
    }
    /// Copies the bytes into a buffer and hands it to ``didReceiveMessage(_:on:)-(ByteBuffer,_)``.
    public mutating func didReceiveMessage(_ message: MappedPayload, on connection: Connection) {
        self.didReceiveMessage(message.copyToBuffer(allocator: connection.channel.allocator), on: connection)
    }
    /// Copies the bytes into a buffer and hands it to ``didReceiveRequest(_:reply:on:)-(ByteBuffer,_,_)``.
    public mutating func didReceiveRequest(_ request: MappedPayload, reply: Reply, on connection: Connection) {
        self.didReceiveRequest(request.copyToBuffer(allocator: connection.channel.allocator), reply: reply, on: connection)
    }
}

/// The answer to one request: complete it once with ``succeed(_:)``, ``fail(_:)`` or ``complete(_:)``, from any
/// thread.
///
/// Only the first completion is sent and counted; later ones, from this value or a copy, do nothing, so that a
/// handler that completes twice can neither send the requester a second reply nor let more requests in than
/// ``ConnectionOptions/maximumConcurrentRequests`` (NIO's promises, by contrast, trap on a second completion).
public struct Reply: Sendable {
    let connection: Connection
    let id: UInt32
    let ticket: ReplyTicket

    /// Sends `payload` as the reply.
    public func succeed(_ payload: ByteBuffer) {
        self.connection.sendReply(id: self.id, ticket: self.ticket, payload: payload)
    }

    /// Sends an error reply; the requester's ``Connection/request(_:timeout:)`` throws a `SocketIPCError` with code
    /// `remoteError` whose message describes `error`. The connection stays open.
    public func fail(_ error: any Error) {
        let message = (error as? SocketIPCError)?.message ?? String(describing: error)
        self.connection.sendErrorReply(id: self.id, ticket: self.ticket, message: message)
    }

    /// Completes the reply with the outcome of `body`, run concurrently, so that slow requests do not hold up the
    /// others on the connection; a thrown error becomes an error reply.
    ///
    /// On a server, `body` runs in a child task of the task that runs ``Server/run()`` (through the connection's
    /// own task for handler work): when the connection closes, or the server's shutdown ends its grace period, the
    /// task is cancelled, and ``Server/run()`` returns only once `body` has returned, as grpc-swift's server waits
    /// for its RPCs. A `body` that takes long must therefore honour cancellation: one that ignores it keeps
    /// ``Server/run()`` from returning. What `body` throws once cancelled is not sent (the connection is closing).
    /// On a client, the connection's task for handler work is a task of its own, cancelled when the connection
    /// closes; nothing waits for it. (A request that arrives after its server's task group has ended, which only a
    /// connection closing during the end of a shutdown can cause, runs in a task of its own, cancelled at once.)
    public func complete(
        _ body: sending @escaping @isolated(any) () async throws -> ByteBuffer
    ) {
        // `body` was sent here: nothing else can reach it, so handing it to the job's task is safe.
        nonisolated(unsafe) let body = body
        self.connection.handlerTasks.get().run {
            do {
                self.succeed(try await body())
            } catch {
                // Cancelled: the connection is closing (it closed, or the server's grace period ended and it closes
                // every connection), so no answer would be read; and none must race the close onto the wire.
                if Task.isCancelled { return }
                self.fail(error)
            }
        }
    }
}

/// A ``ConnectionHandler`` made of closures, for handlers that need no per-connection state.
///
/// `onRequest` runs in a child task of its own for each request (see ``Reply/complete(_:)``), so requests on one
/// connection run concurrently and complete in any order; a thrown error becomes an error reply. The task is
/// cancelled when the connection closes.
public struct AsyncRequestHandler: ConnectionHandler, Sendable {
    private let onMessage: @Sendable (ByteBuffer, Connection) -> Void
    private let onRequest: @Sendable (ByteBuffer, Connection) async throws -> ByteBuffer

    /// Creates the handler.
    /// - Parameters:
    ///   - onMessage: Called on the event loop for each one-way message; must not block.
    ///   - onRequest: Called in a child task for each request; returns the reply, or throws to send an error reply.
    public init(
        onMessage: @escaping @Sendable (ByteBuffer, Connection) -> Void = { _, _ in },
        onRequest: @escaping @Sendable (ByteBuffer, Connection) async throws -> ByteBuffer
    ) {
        self.onMessage = onMessage
        self.onRequest = onRequest
    }

    /// Passes the message to `onMessage`.
    public func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.onMessage(message, connection)
    }

    /// Runs `onRequest` in a child task and replies with its outcome.
    public func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let onRequest = self.onRequest
        reply.complete { try await onRequest(request, connection) }
    }
}
