#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore

extension Connection {
    /// Sends `message` encoded as JSON, as a one-way message.
    /// - Parameters:
    ///   - message: The value to send.
    ///   - encoder: The encoder; default a plain `JSONEncoder`.
    public func send<Message: Encodable>(_ message: Message, encoder: JSONEncoder = JSONEncoder()) async throws {
        try await self.send(try encoder.encodeAsBuffer(message))
    }

    /// Sends `request` encoded as JSON and decodes the JSON reply as `Response`.
    /// - Parameters:
    ///   - request: The value to send.
    ///   - type: The type of the reply.
    ///   - timeout: How long to wait; `nil` uses ``ConnectionOptions/requestTimeout``.
    ///   - encoder: The encoder; default a plain `JSONEncoder`.
    ///   - decoder: The decoder; default a plain `JSONDecoder`.
    /// - Returns: The decoded reply.
    /// - Throws: What ``request(_:timeout:)`` throws, or a `DecodingError` for a reply that is not a `Response`.
    public func request<Request: Encodable, Response: Decodable>(
        _ request: Request,
        as type: Response.Type,
        timeout: Duration? = nil,
        encoder: JSONEncoder = JSONEncoder(),
        decoder: JSONDecoder = JSONDecoder()
    ) async throws -> Response {
        let payload = try encoder.encodeAsBuffer(request)
        let reply = try await self.request(payload, timeout: timeout)
        return try decoder.decode(Response.self, fromBuffer: reply)
    }
}

extension Reply {
    /// Replies with `value` encoded as JSON; if encoding fails, sends an error reply instead.
    public func succeed<Value: Encodable>(encoding value: Value, encoder: JSONEncoder = JSONEncoder()) {
        do {
            self.succeed(try encoder.encodeAsBuffer(value))
        } catch {
            self.fail(error)
        }
    }
}

extension ByteBuffer {
    /// Decodes this buffer's readable bytes as JSON.
    /// - Parameters:
    ///   - type: The type to decode.
    ///   - decoder: The decoder; default a plain `JSONDecoder`.
    public func decodeJSON<Value: Decodable>(as type: Value.Type, decoder: JSONDecoder = JSONDecoder()) throws -> Value {
        try decoder.decode(Value.self, fromBuffer: self)
    }
}
