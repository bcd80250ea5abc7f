/// An `xxd`-style dump: 16 bytes a line, the offset, the bytes in hex in pairs, and the bytes as ASCII with `.` for
/// anything not printable.
///
/// ```
/// 00000000: 6865 6c6c 6f20 776f 726c 640a 1b5b 3331  hello world..[31
/// 00000010: 6d                                       m
/// ```
enum HexDump {
    /// The dump of `bytes`, one line per 16 bytes, without a final newline; empty for no bytes.
    static func lines(_ bytes: [UInt8]) -> [String] {
        stride(from: 0, to: bytes.count, by: 16).map { offset in
            let row = bytes[offset..<min(offset + 16, bytes.count)]
            var hex = ""
            for (index, byte) in row.enumerated() {
                if index > 0 && index % 2 == 0 { hex += " " }
                hex += self.hexByte(byte)
            }
            let padding = String(repeating: " ", count: 39 - hex.count)
            let ascii = String(decoding: row.map { (0x20...0x7e).contains($0) ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
            return self.offset(offset) + ": " + hex + padding + "  " + ascii
        }
    }

    /// `byte` as two lowercase hex digits.
    private static func hexByte(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]])
    }

    /// `offset` as eight hex digits.
    private static func offset(_ offset: Int) -> String {
        let text = String(offset, radix: 16)
        return String(repeating: "0", count: max(0, 8 - text.count)) + text
    }
}
