import Foundation
import NIOCore

/// A payload as JSON fields: `{"payload": TEXT, "encoding": "utf8"}` when it is valid UTF-8, else
/// `{"payload": BASE64, "encoding": "base64"}` (RFC 4648); `size` is its length in bytes either way.
func payloadJSON(_ buffer: ByteBuffer) -> [String: Any] {
    let bytes = Array(buffer.readableBytesView)
    if let text = String(validating: bytes, as: UTF8.self) {
        return ["payload": text, "encoding": "utf8", "size": bytes.count]
    }
    return ["payload": Data(bytes).base64EncodedString(), "encoding": "base64", "size": bytes.count]
}
