import NIOCore

/// The 8 bytes each side sends first on a framed connection: magic `SIPC`, version, flags, reserved.
@usableFromInline
package enum Hello: Sendable {
    /// `S` `I` `P` `C`.
    @usableFromInline
    package static let magic: UInt32 = 0x5349_5043
    /// The protocol version this implementation speaks.
    @usableFromInline
    package static let version: UInt8 = 1
    /// Bytes in a hello.
    @usableFromInline
    package static let length = 8

    package static func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(UInt8(0))  // flags
        buffer.writeInteger(UInt16(0))  // reserved
    }
}
