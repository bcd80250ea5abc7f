import Foundation
import NIOCore

/// A payload as JSON fields: `{"payload": TEXT, "encoding": "utf8"}` when it is printable UTF-8 (``SafeText``:
/// newlines and tabs allowed, which JSON escapes; no C1 control, format character or the like, which JSON would
/// carry raw to a terminal), else `{"payload": BASE64, "encoding": "base64"}` (RFC 4648); `size` is its length in
/// bytes either way.
func payloadJSON(_ buffer: ByteBuffer) -> [String: Any] {
    let bytes = Array(buffer.readableBytesView)
    if SafeText.isPrintable(bytes), let text = String(validating: bytes, as: UTF8.self) {
        return ["payload": text, "encoding": "utf8", "size": bytes.count]
    }
    return ["payload": Data(bytes).base64EncodedString(), "encoding": "base64", "size": bytes.count]
}
