extension String {
    /// The longest prefix of the string whose UTF-8 takes at most `limit` bytes, cut between characters' scalars (never
    /// inside one): for texts that must fit a frame, such as an error reply's.
    package func prefix(utf8Bytes limit: Int) -> String {
        let utf8 = self.utf8
        guard utf8.count > limit else { return self }
        guard limit > 0 else { return "" }
        var end = utf8.index(utf8.startIndex, offsetBy: limit)
        // Back to the start of the scalar the cut would split: continuation bytes are 0b10xxxxxx.
        while end > utf8.startIndex, utf8[end] & 0xC0 == 0x80 { end = utf8.index(before: end) }
        return String(self[..<end])
    }
}
