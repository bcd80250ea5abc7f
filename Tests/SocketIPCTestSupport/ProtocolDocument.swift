import Foundation

/// The repository's PROTOCOL.md, which the tests read their vectors and documented byte dumps from.
public enum ProtocolDocument {
    /// An error finding or reading the document.
    public struct Missing: Error, CustomStringConvertible {
        /// What is missing.
        public let description: String
    }

    /// The location of PROTOCOL.md: the first directory above this file that holds one.
    /// - Throws: ``Missing`` when no directory above holds it.
    public static func url() throws -> URL {
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while directory.pathComponents.count > 1 {
            let candidate = directory.appendingPathComponent("PROTOCOL.md")
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
            directory.deleteLastPathComponent()
        }
        throw Missing(description: "no PROTOCOL.md in any directory above \(#filePath)")
    }

    /// `bytes` as lowercase hex digits, two per byte, without separators, as PROTOCOL.md's vectors write them.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { ($0 < 0x10 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// The bytes that `hex` writes as hex digits, two per byte, spaces ignored (as PROTOCOL.md groups them).
    public static func bytes(hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }
}
