import NIOCore

/// Text a peer sent for a person to read (a going-away's or an error reply's text, a call's status message and error
/// code), made safe to keep, print and log: at most ``limit`` bytes of it are kept, and every character that could act
/// on a terminal or start a line of its own is written as an escape.
///
/// Such text ends up in error messages that applications print and in the library's own log lines, so a peer could
/// otherwise retitle a terminal, clear it, or forge a log line with a newline (found by a review of hostile servers;
/// OpenSSH makes a peer's banner and version strings safe the same way before it prints or logs them, `strnvis(3)`),
/// and a 16 MiB going-away text was kept whole in every copy of the error.
///
/// Escapes: C0 controls and DEL as `\xNN` (ESC is `\x1b`), C1 controls, the bidirectional controls (such as the
/// overrides, U+202E) and line and paragraph separators as `\u{NNNN}`, as the CLI prints what it escapes. A newline and a tab
/// are kept where ``read(_:length:limit:keepingNewlines:)`` is asked to (an application error's message).
@usableFromInline
package enum PeerText {
    /// The most bytes of a going-away's or an error reply's text kept: 4 KiB. A longer one ends with
    /// `… (N bytes in all)`.
    @usableFromInline
    package static let limit = 4096

    /// Reads `length` bytes of text from `buffer` (which holds them), keeps at most `limit` of them, escaped.
    @usableFromInline
    package static func read(
        _ buffer: inout ByteBuffer,
        length: Int,
        limit: Int = PeerText.limit,
        keepingNewlines: Bool = false
    ) -> String {
        guard length > 0 else { return "" }
        var kept = min(length, limit)
        if kept < length {
            // Cut at a character's start, not inside its UTF-8 bytes (which would decode as U+FFFD).
            while kept > 0, let byte = buffer.getInteger(at: buffer.readerIndex + kept, as: UInt8.self),
                byte & 0xC0 == 0x80
            {
                kept -= 1
            }
        }
        let text = buffer.readString(length: kept) ?? ""
        buffer.moveReaderIndex(forwardBy: min(length - kept, buffer.readableBytes))
        let safe = Self.escaped(text, keepingNewlines: keepingNewlines)
        return length > kept ? safe + "… (\(length) bytes in all)" : safe
    }

    /// `text` with what could act on a terminal escaped (see ``PeerText``); `text` itself when there is nothing to
    /// escape, which printable ASCII shows at once.
    package static func escaped(_ text: String, keepingNewlines: Bool = false) -> String {
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return text }
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if keepingNewlines && (scalar == "\n" || scalar == "\t") {
                escaped.unicodeScalars.append(scalar)
            } else if scalar.value < 0x20 || scalar.value == 0x7F {
                escaped += "\\x" + Self.hex(scalar.value, digits: 2)
            } else if Self.actsOnTerminal(scalar) {
                escaped += "\\u{" + Self.hex(scalar.value, digits: 4) + "}"
            } else {
                escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    /// C1 controls, line and paragraph separators, and the bidirectional controls (which reorder what a terminal
    /// shows); not other format characters such as the zero-width joiner of emoji sequences or Persian's non-joiner,
    /// which ordinary text has (found by a review).
    private static func actsOnTerminal(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x80...0x9F, 0x2028, 0x2029, 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
