/// Any JSON value, as a `Codable` type: the request and response of `demo.echo`, which answers whatever it is sent.
///
/// Integers that fit in 64 bits stay integers (`1` comes back as `1`, not `1.0`); other numbers are `Double`s.
enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The deepest nesting decoded: 64 levels. Each level tries the kinds of value in turn, so a peer's deeply nested
    /// request would otherwise cost the demo server's event loop seconds of CPU for a few kilobytes.
    static var maximumDepth: Int { 64 }

    init(from decoder: any Decoder) throws {
        guard decoder.codingPath.count < Self.maximumDepth else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: [], debugDescription: "JSON nested deeper than \(Self.maximumDepth) levels")
            )
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else if let value = try? container.decode([String: JSONValue].self) {
            self = .object(value)
        } else {
            // Not "expected a dictionary", which is what the last attempt would say.
            throw DecodingError.dataCorrupted(
                .init(
                    codingPath: [],
                    debugDescription: "not a JSON value this service takes: nested deeper than \(Self.maximumDepth) "
                        + "levels, a number beyond a Double's range, or a string that is not valid Unicode"
                )
            )
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}
