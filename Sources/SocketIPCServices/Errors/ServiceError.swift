import NIOCore

/// An error of the service's own, as data: a handler throws it, and the caller catches it, with its code, text and
/// details, distinct from a transport failure (which is a `SocketIPCError`).
///
/// ```swift
/// // The handler:
/// throw ServiceError(code: "notFound", message: "no key \(key)", details: ["key": key])
/// // The caller:
/// do {
///     _ = try await client.call(Get.self, "missing")
/// } catch let error as ServiceError where error.code == "notFound" {
///     let details = try error.details(as: [String: String].self)
/// }
/// ```
///
/// On the wire it is a call end with status `0x01` (PROTOCOL.md, "Calls"): the code, the text, and the details
/// encoded by the service's codec. An error of any other type thrown by a handler reaches the caller as a
/// `SocketIPCError` with code `remoteError` and the error's description.
public struct ServiceError: Error, Sendable, CustomStringConvertible {
    /// The service's name for the error, such as `notFound`; 0 to 255 bytes of UTF-8.
    public let code: String
    /// What happened, for a person to read; 0 to 65,535 bytes of UTF-8.
    public let message: String
    /// The details to send, as the handler gave them.
    let outgoingDetails: (any Encodable & Sendable)?
    /// The details as received, encoded by the service's codec; `nil` when there are none.
    public let encodedDetails: ByteBuffer?
    /// The codec the details were received with.
    let codec: (any MessageCodec)?

    /// Creates an error to throw from a handler.
    /// - Parameters:
    ///   - code: The service's name for the error.
    ///   - message: What happened, for a person to read; default empty.
    ///   - details: Data the caller can decode with ``details(as:)``; default none.
    public init(code: String, message: String = "", details: (any Encodable & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.outgoingDetails = details
        self.encodedDetails = nil
        self.codec = nil
    }

    /// The error as received from the peer.
    init(code: String, message: String, encodedDetails: ByteBuffer?, codec: any MessageCodec) {
        self.code = code
        self.message = message
        self.outgoingDetails = nil
        self.encodedDetails = encodedDetails
        self.codec = codec
    }

    /// Decodes the details sent with the error.
    /// - Returns: The details, or `nil` if the error has none.
    /// - Throws: The codec's error if they are not a `Details`.
    public func details<Details: Decodable>(as type: Details.Type) throws -> Details? {
        guard let encodedDetails, encodedDetails.readableBytes > 0 else { return nil }
        return try (self.codec ?? JSONCodec()).decode(Details.self, from: encodedDetails)
    }

    /// `ServiceError(code): message`.
    public var description: String {
        self.message.isEmpty ? "ServiceError(\(self.code))" : "ServiceError(\(self.code)): \(self.message)"
    }
}
