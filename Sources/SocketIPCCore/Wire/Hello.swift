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
    /// The flags this implementation sends by default: it speaks calls, and sends their messages within credit. A
    /// side that passes descriptors adds ``HelloFlags/descriptors``.
    package static let flags: HelloFlags = [.calls, .strictCredit]
    /// Every flag this implementation knows.
    package static let knownFlags: HelloFlags = [.calls, .descriptors, .sharedPayloads, .strictCredit, .descriptorCredit]

    /// Writes this side's hello.
    package static func write(into buffer: inout ByteBuffer, flags: HelloFlags = Hello.flags) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.version)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(UInt16(0))  // reserved
    }
}

/// The hello's flags byte: the optional parts of the protocol the sender speaks. A version 1 peer sends 0 and
/// ignores what it receives, so a flag only ever adds frames both sides understand. See PROTOCOL.md, "Framed style: the hello".
///
/// The flags are computed, not stored: the read loop checks one for every frame, and a stored static would cost a
/// lazy-initialisation check each time.
@usableFromInline
package struct HelloFlags: OptionSet, Sendable, Hashable {
    @usableFromInline
    package let rawValue: UInt8

    @inlinable
    package init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Bit 0 (`0x01`): the sender speaks frames `0x06` to `0x0C` (calls with streams, credit, cancel, ping and pong).
    @inlinable
    package static var calls: HelloFlags { HelloFlags(rawValue: 0x01) }

    /// Bit 1 (`0x02`): the sender passes and accepts file descriptors (`SCM_RIGHTS`) announced by frame `0x0D`.
    @inlinable
    package static var descriptors: HelloFlags { HelloFlags(rawValue: 0x02) }

    /// Bit 2 (`0x04`): the sender sends and accepts large payloads in sealed shared memory (frame `0x0E`, its
    /// `memfd` passed by a descriptors frame); only with ``descriptors``.
    @inlinable
    package static var sharedPayloads: HelloFlags { HelloFlags(rawValue: 0x04) }

    /// Bit 3 (`0x08`): the sender sends a call message only within the credit it has (never beyond it, as a version
    /// 1 sender of calls may, by one message), and asks for the credit a larger message needs with frame `0x0F`
    /// (call blocked); only with ``calls``. When both hellos set it, a call message beyond its credit is a protocol
    /// error, so that a receiver holds at most its window per call (PROTOCOL.md, "Flow control").
    @inlinable
    package static var strictCredit: HelloFlags { HelloFlags(rawValue: 0x08) }

    /// Bit 4 (`0x10`): each descriptor a call message carries costs ``CallStateMachine/descriptorCost`` (1,024) bytes
    /// of the call's credit on top of the frame's bytes, both ways; only with ``calls`` and ``descriptors``, and in
    /// force only when both hellos set it. A receiver's credit then bounds the descriptors it holds per call, as it
    /// bounds the bytes, so that an honest sender never passes more than its receiver keeps for a reader that is
    /// busy (PROTOCOL.md, "Flow control").
    @inlinable
    package static var descriptorCredit: HelloFlags { HelloFlags(rawValue: 0x10) }
}
