/// JSON text laid out again in one pass over its bytes, without building its value: on one line (the whitespace
/// between tokens dropped) or indented. Strings, numbers and literals stay byte for byte as they came, and keys in
/// their order, so that what is printed is the value the server sent, as `jq -c .` and `jq .` print it.
///
/// Time and memory are linear in the text, whatever its shape (found by a review: re-serializing a server's 16 MiB
/// response with `JSONSerialization` took 0.8 to 1 GB and up to a minute, past `--timeout`). The text must be valid
/// JSON (``JSONSyntax/isValid(_:)``): the layout trusts its grammar.
enum JSONLayout {
    /// `text` on one line: every space, tab, newline and carriage return between tokens dropped (inside a string
    /// they are escaped, so none is a string's).
    static func oneLine(_ text: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(text.count)
        var index = 0
        while index < text.count {
            let byte = text[index]
            if byte == UInt8(ascii: "\"") {
                let end = Self.stringEnd(text, from: index)
                output.append(contentsOf: text[index..<end])
                index = end
            } else {
                if !Self.isWhitespace(byte) { output.append(byte) }
                index += 1
            }
        }
        return output
    }

    /// `text` indented by two spaces a level, one element or member a line, a member's key and value separated by
    /// ` : ` (as `JSONSerialization`'s `.prettyPrinted` lays it out); an empty object or array stays `{}` or `[]`.
    /// - Parameter limit: The most bytes the result may have.
    /// - Returns: The indented text, or `nil` when it would be longer than `limit` (deep nesting indents each line
    ///   deeper: the caller prints ``oneLine(_:)`` instead).
    static func indented(_ text: [UInt8], limit: Int) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(min(limit, text.count * 2))
        var depth = 0
        var index = 0
        func newLine() -> Bool {
            guard output.count + 1 + 2 * depth <= limit else { return false }
            output.append(UInt8(ascii: "\n"))
            output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: 2 * depth))
            return true
        }
        while index < text.count {
            let byte = text[index]
            switch byte {
            case UInt8(ascii: "\""):
                let end = Self.stringEnd(text, from: index)
                output.append(contentsOf: text[index..<end])
                index = end
                continue
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                output.append(byte)
                let next = Self.skippingWhitespace(text, from: index + 1)
                if next < text.count, text[next] == byte + 2 {  // `}` and `]` follow `{` and `[` by two
                    output.append(text[next])
                    index = next + 1
                    continue
                }
                depth += 1
                guard newLine() else { return nil }
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
                guard newLine() else { return nil }
                output.append(byte)
            case UInt8(ascii: ","):
                output.append(byte)
                guard newLine() else { return nil }
            case UInt8(ascii: ":"):
                output.append(contentsOf: [UInt8(ascii: " "), UInt8(ascii: ":"), UInt8(ascii: " ")])
            default:
                if !Self.isWhitespace(byte) { output.append(byte) }
            }
            guard output.count <= limit else { return nil }
            index += 1
        }
        return output
    }

    /// The index just past the string that starts (with its quote) at `start`.
    private static func stringEnd(_ text: [UInt8], from start: Int) -> Int {
        var index = start + 1
        while index < text.count {
            switch text[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""): return index + 1
            default: index += 1
            }
        }
        return text.count
    }

    private static func skippingWhitespace(_ text: [UInt8], from start: Int) -> Int {
        var index = start
        while index < text.count, Self.isWhitespace(text[index]) { index += 1 }
        return index
    }

    /// JSON's whitespace (RFC 8259, section 2).
    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}
