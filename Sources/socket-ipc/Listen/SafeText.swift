/// Text that is safe to print on a terminal: printable characters as they are, everything else escaped, so that no
/// payload can move the cursor, change colours or retitle the window.
enum SafeText {
    /// `bytes` as text with control characters escaped (see ``escape(_:)``), or `nil` when they are not valid UTF-8.
    static func text(_ bytes: [UInt8]) -> String? {
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        return self.escape(text)
    }

    /// `text` with newlines and tabs kept, a backslash doubled, and every other character that could act on a
    /// terminal escaped: C0 controls and DEL as `\xNN` (ESC is `\x1b`), C1 controls, format characters (such as the
    /// bidirectional overrides), line and paragraph separators and unassigned code points as `\u{NNNN}`.
    static func escape(_ text: String) -> String {
        self.escape(text, doublingBackslashes: true)
    }

    /// ``escape(_:)``, with a backslash doubled only if `doublingBackslashes`.
    private static func escape(_ text: String, doublingBackslashes: Bool) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n", "\t":
                escaped.unicodeScalars.append(scalar)
            case "\\" where doublingBackslashes:
                escaped += "\\\\"
            case _ where !self.isPrintable(scalar):
                escaped +=
                    scalar.value < 0x80
                    ? "\\x" + hex(scalar.value, digits: 2) : "\\u{" + hex(scalar.value, digits: 4) + "}"
            default:
                escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    /// `text` escaped as ``escape(_:)`` does, with newlines and tabs escaped too (`\n`, `\t`): for one line of a
    /// diagnostic that quotes what a peer sent (an error reply's text, a going-away reason), which then can neither
    /// act on the terminal nor pass for a line of its own.
    static func oneLine(_ text: String) -> String {
        Self.lineBreaksEscaped(Self.escape(text, doublingBackslashes: true))
    }

    /// `text` as one line of a diagnostic: SocketIPC's words, and a peer's text that the library has made safe
    /// already (an error reply's or a going-away's text, a close reason: ESC is there as `\x1b`). What could still act
    /// on a terminal or end the line is escaped as ``oneLine(_:)`` does, but a backslash is kept as it is, so that the
    /// library's escapes are not escaped a second time (`\\x1b`, found by a review).
    static func message(_ text: String) -> String {
        Self.lineBreaksEscaped(Self.escape(text, doublingBackslashes: false))
    }

    /// `text` with its newlines and tabs (which ``escape(_:)`` keeps) and carriage returns written as `\n`, `\t`, `\r`.
    private static func lineBreaksEscaped(_ text: String) -> String {
        text.replacing("\n", with: "\\n").replacing("\t", with: "\\t").replacing("\r", with: "\\r")
    }

    /// Valid JSON `text` with every character that could act on a terminal written as a JSON escape (`\u001b`, a
    /// pair of them beyond the BMP): the same JSON, safe to print. Such characters can only stand inside strings
    /// (JSON's whitespace is a space, a tab, a newline or a carriage return, which are kept), so escaping them
    /// changes no value.
    static func json(_ text: String) -> String {
        guard !text.unicodeScalars.allSatisfy({ $0 == "\n" || $0 == "\t" || $0 == "\r" || self.isPrintable($0) }) else {
            return text
        }
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if scalar == "\n" || scalar == "\t" || scalar == "\r" || self.isPrintable(scalar) {
                escaped.unicodeScalars.append(scalar)
            } else {
                for unit in String(scalar).utf16 { escaped += "\\u" + hex(UInt32(unit), digits: 4) }
            }
        }
        return escaped
    }

    /// Whether `bytes` are UTF-8 text that needs no escaping but for newlines and tabs.
    static func isPrintable(_ bytes: [UInt8]) -> Bool {
        guard let text = String(validating: bytes, as: UTF8.self) else { return false }
        return text.unicodeScalars.allSatisfy { $0 == "\n" || $0 == "\t" || self.isPrintable($0) }
    }

    /// Whether `scalar` prints as itself: not a control, format, separator (other than the space) or unassigned
    /// character.
    private static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate:
            return false
        default:
            return true
        }
    }

    /// `value` in lowercase hex, at least `digits` wide.
    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
