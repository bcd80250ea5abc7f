/// Whether bytes are one JSON text by RFC 8259's grammar: one value with whitespace around it, whatever the range of
/// its numbers, the depth of its nesting or the code points its `\u` escapes name. `JSONSerialization` refuses some
/// of those (`1e400`, a lone surrogate `"\ud800"`, 513 levels of arrays) that are JSON all the same.
enum JSONSyntax {
    /// What the checker expects next.
    private enum Expecting {
        case value
        case key
        case afterValue
    }

    /// Whether `bytes` (UTF-8, checked by the caller) are one JSON text. Iterative: no nesting exhausts the stack.
    static func isValid(_ bytes: [UInt8]) -> Bool {
        var index = 0
        var open: [UInt8] = []  // the containers around the next value: `{` or `[`
        var expecting = Expecting.value
        func skipWhitespace() {
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        }
        func take(_ byte: UInt8) -> Bool {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }
        while true {
            skipWhitespace()
            switch expecting {
            case .key:
                guard Self.string(bytes, &index), take(UInt8(ascii: ":")) else { return false }
                expecting = .value
            case .value:
                guard index < bytes.count else { return false }
                switch bytes[index] {
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    let opening = bytes[index]
                    index += 1
                    skipWhitespace()
                    let closing = opening == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
                    if index < bytes.count, bytes[index] == closing {
                        index += 1
                        expecting = .afterValue
                    } else {
                        open.append(opening)
                        expecting = opening == UInt8(ascii: "{") ? .key : .value
                    }
                case UInt8(ascii: "\""):
                    guard Self.string(bytes, &index) else { return false }
                    expecting = .afterValue
                case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
                    guard let literal = ["true", "false", "null"].first(where: { bytes[index...].starts(with: $0.utf8) })
                    else { return false }
                    index += literal.utf8.count
                    expecting = .afterValue
                default:
                    guard Self.number(bytes, &index) else { return false }
                    expecting = .afterValue
                }
            case .afterValue:
                guard let container = open.last else { return index == bytes.count }
                guard index < bytes.count else { return false }
                let closing = container == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    expecting = container == UInt8(ascii: "{") ? .key : .value
                } else if bytes[index] == closing {
                    index += 1
                    open.removeLast()
                } else {
                    return false
                }
            }
        }
    }

    /// A string at `index` (its opening quote), which moves past it.
    private static func string(_ bytes: [UInt8], _ index: inout Int) -> Bool {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return false }
        index += 1
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return true
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { return false }
                let escaped = bytes[index + 1]
                if escaped == UInt8(ascii: "u") {
                    guard index + 5 < bytes.count,
                        bytes[(index + 2)...(index + 5)].allSatisfy({ Self.isHexDigit($0) })
                    else { return false }
                    index += 6
                } else {
                    guard Array("\"\\/bfnrt".utf8).contains(escaped) else { return false }
                    index += 2
                }
            case 0x00..<0x20:
                return false
            default:
                index += 1
            }
        }
        return false
    }

    /// A number at `index`, which moves past it: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
    private static func number(_ bytes: [UInt8], _ index: inout Int) -> Bool {
        func digits() -> Int {
            let start = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            return index - start
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count else { return false }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else if digits() == 0 {
            return false
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { return false }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { return false }
        }
        return true
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}
