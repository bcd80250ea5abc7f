import NIOCore

/// The acknowledgement of an EOF-style message by `serve`, `listen` and `demo`: the 4-byte big-endian count of bytes
/// received.
///
/// ```
/// +--------+--------+--------+--------+
/// |   count of message bytes (UInt32) |
/// +--------+--------+--------+--------+
/// ```
func countAcknowledgement(_ count: Int) -> ByteBuffer {
    var acknowledgement = ByteBuffer()
    acknowledgement.writeInteger(UInt32(truncatingIfNeeded: count))
    return acknowledgement
}
