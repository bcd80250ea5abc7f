import ArgumentParser
import Foundation
import SocketIPC

/// How `listen` prints each message it receives.
///
/// `text` and `hex` print a line of metadata, then the payload (in `text`, each line indented by two spaces, so that
/// a payload cannot forge a metadata line):
///
/// ```
/// 2026-11-30T16:03:06.123Z message 5 bytes from uid=1000 gid=1000 pid=4242 (connection 3)
///   hello
/// ```
///
/// `json` prints one object per message on one line, with no separate metadata line:
///
/// ```
/// {"connection":3,"encoding":"utf8","kind":"message","payload":"hello","peer":{"gid":1000,"pid":4242,"uid":1000},"size":5,"time":"2026-11-30T16:03:06.123Z"}
/// ```
enum MessageFormat: String, ExpressibleByArgument, CaseIterable {
    /// The payload as text: printable UTF-8 as it is (newlines and tabs too), other characters escaped (`\x1b`,
    /// `\u{202e}`, a backslash doubled); a payload that is not UTF-8 as a hex dump.
    case text
    /// The payload as an `xxd`-style hex dump.
    case hex
    /// One JSON object per message: `time`, `kind`, `size`, `connection`, `peer` (`pid`, `uid`, `gid`; absent when
    /// unknown), `descriptors` (what each passed descriptor was: `path`, `type`, and `size` for a file; absent when
    /// none came), and `payload`, a string when the payload is printable UTF-8 (`encoding` `utf8`) and base64
    /// otherwise (`encoding` `base64`).
    case json

    /// The lines to print for `message`, joined by newlines (no final newline); `colored` dims the metadata line.
    func render(_ message: ReceivedMessage, colored: Bool = false) -> String {
        switch self {
        case .json:
            return Self.json(message)
        case .text:
            let metadata = Self.metadata(message, colored: colored)
            if message.payload.isEmpty { return metadata }
            var payload: [Substring]
            if var text = SafeText.text(message.payload) {
                if text.hasSuffix("\n") { text.removeLast() }
                payload = text.split(separator: "\n", omittingEmptySubsequences: false)
            } else {
                payload = HexDump.lines(message.payload).map { Substring($0) }
            }
            // Every payload line is indented: a peer's text can never pass for a metadata line of its own.
            return ([metadata] + payload.map { "  " + $0 }).joined(separator: "\n")
        case .hex:
            return ([Self.metadata(message, colored: colored)] + HexDump.lines(message.payload))
                .joined(separator: "\n")
        }
    }

    /// `TIME KIND N bytes from uid=U gid=G pid=P (connection C)`, and `with descriptors: PATH (TYPE, N bytes); ...`
    /// when descriptors came with it.
    static func metadata(_ message: ReceivedMessage, colored: Bool) -> String {
        let size = message.payload.count == 1 ? "1 byte" : "\(message.payload.count) bytes"
        var line =
            "\(message.timestamp) \(message.kind.rawValue) \(size) from \(peerDescription(message.peer)) "
            + "(connection \(message.connectionID))"
        if !message.descriptors.isEmpty {
            line += " with descriptors: " + message.descriptors.map(\.text).joined(separator: "; ")
        }
        return colored ? "\u{1B}[2m\(line)\u{1B}[0m" : line
    }

    /// The JSON line of `message`.
    static func json(_ message: ReceivedMessage) -> String {
        var object: [String: Any] = [
            "time": message.timestamp,
            "kind": message.kind.rawValue,
            "size": message.payload.count,
            "connection": message.connectionID,
        ]
        if let peer = message.peer {
            object["peer"] = ["pid": Int(peer.processID), "uid": Int(peer.userID), "gid": Int(peer.groupID)]
        }
        if !message.descriptors.isEmpty {
            object["descriptors"] = message.descriptors.map(\.json)
        }
        if SafeText.isPrintable(message.payload) {
            object["payload"] = String(decoding: message.payload, as: UTF8.self)
            object["encoding"] = "utf8"
        } else {
            object["payload"] = Data(message.payload).base64EncodedString()
            object["encoding"] = "base64"
        }
        let options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: options) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
