/// A method of a service, declared once and shared by the server that handles it and the clients that call it:
/// its name on the wire and its `Codable` request and response types.
///
/// ```swift
/// enum Get: ServiceMethod {
///     static let name = "kv.get"
///     typealias Request = String        // the key
///     typealias Response = String?      // its value, if any
///     static let isIdempotent = true    // safe to retry after a lost connection
/// }
/// let value = try await client.call(Get.self, "colour")
/// ```
///
/// The same declaration serves every call shape: a unary call (one request, one response), server streaming (one
/// request, a stream of responses), client streaming (a stream of requests, one response) and bidirectional
/// streaming. The server registers the method with the shape it handles (``ServiceRouter``), and the caller calls it
/// with the same shape; a mismatch (two requests to a unary handler) fails the call with `invalidMessage`.
public protocol ServiceMethod: SendableMetatype {
    /// What the caller sends: the request (or each element of a request stream).
    associatedtype Request: Codable & Sendable
    /// What the handler answers: the response (or each element of a response stream).
    associatedtype Response: Codable & Sendable
    /// The method's name on the wire, 1 to 255 bytes of UTF-8, unique within the server; by convention
    /// `service.method`, such as `kv.get`. A call of an empty or longer name fails with `invalidMessage` before
    /// anything is sent, and registering one with ``ServiceRouter`` traps (no call could reach it).
    static var name: String { get }
    /// Whether calling the method twice has the effect of calling it once, so that a ``ServiceClient`` may repeat a
    /// call whose connection was lost before the response came (as gRPC's retry policy and HTTP's idempotent
    /// methods). Default `false`: a call that may have reached the server is never repeated (one that surely did
    /// not, its connection gone before it was written or refused by a server going away before its handler ran, is).
    static var isIdempotent: Bool { get }
    /// The largest request the handler takes, in bytes of its encoded message (each message of a request stream);
    /// `nil`, the default, takes up to the connection's `ConnectionOptions.maximumMessageSize` (16 MiB by default).
    ///
    /// A larger request ends the call with status `invalidMessage` (the caller's `call` throws a `SocketIPCError`
    /// with that code, which is not retried) and is dropped, the connection and its other calls going on, as gRPC's
    /// `maxRequestMessageBytes` of a method's service config (gRPC answers `RESOURCE_EXHAUSTED`, which here would
    /// say "try again later"). With strict credit (PROTOCOL.md, "Flow control") the
    /// limit applies before the bytes are sent: a caller that asks for credit for a larger message is refused
    /// instead, so a method that takes small requests never lets a caller make the server hold large ones (before,
    /// 100 calls that each asked for 16 MiB of a method that decodes at most 1 MiB took a server from 30 to 298 MiB).
    /// Applies to the server's side; a caller sends what it likes.
    static var maximumRequestSize: Int? { get }
}

extension ServiceMethod {
    /// `false`: calls are not repeated unless the method says they may be.
    public static var isIdempotent: Bool { false }
    /// `nil`: requests up to the connection's maximum message size.
    public static var maximumRequestSize: Int? { nil }
}
