/// Finds the descriptors frames (`0x0D`) in a framed byte stream as it passes, without decoding anything else: the
/// relay that carries a connection's bytes uses it to attach passed descriptors (`SCM_RIGHTS`) to the first byte of
/// each such frame it sends, and to claim the descriptors it received when such a frame's last byte arrives.
///
/// A value without I/O, fed the stream in pieces of any size, starting with the sender's 8-byte hello:
///
/// ```
/// hello (8 B) | length u32 | kind u8 | ... length - 1 bytes ... | length u32 | 0x0D | count u8 | ...
/// ```
///
/// It never allocates per frame and never trusts a length beyond counting bytes down, so a hostile stream costs it
/// nothing; a frame of length 0 (which the decoder refuses) stops it (``isBroken``).
package struct DescriptorFrameScanner: Sendable {
    /// A descriptors frame seen in one piece.
    package struct Found: Equatable, Sendable {
        /// The offset in the piece of the frame's first byte, found when its header completes in this piece (negative
        /// when the header began in an earlier piece); `nil` when the header completed in an earlier piece.
        package var start: Int?
        /// The offset in the piece of the frame's last byte (its count); `nil` when that is still to come.
        package var end: Int?
        /// The count of descriptors the frame announces, once its last byte was seen.
        package var count: Int?
    }

    /// Bytes of the hello still to pass.
    private var helloRemaining = 8
    /// The flags byte of the hello, once it passed.
    package private(set) var helloFlags: HelloFlags?
    /// The header bytes of the frame being read, up to 5 (length and kind).
    private var header: UInt64 = 0
    private var headerCount = 0
    /// Bytes of the current frame after its header still to pass.
    private var frameRemaining = 0
    /// Whether the current frame is a descriptors frame whose count byte is still to come.
    private var inDescriptorsFrame = false
    /// Whether the stream broke the framing (a length of 0): nothing more is found.
    package private(set) var isBroken = false

    /// Makes a scanner for a stream that starts with a hello.
    package init() {}

    /// How many bytes at the end of the last piece scanned are the start of a frame header (length and kind) not yet
    /// complete: a sender that must attach descriptors to a frame's first byte holds them back until it knows the kind.
    package var incompleteHeaderBytes: Int { self.headerCount }

    /// Whether the last piece scanned ended inside what may be a descriptors frame: a frame header not yet complete,
    /// or a descriptors frame whose count is still to come. Descriptors that arrived with bytes and are not claimed
    /// by the end of a piece that ends elsewhere did not come with a descriptors frame.
    package var mayBeInsideDescriptorsFrame: Bool { self.headerCount > 0 || self.inDescriptorsFrame }

    /// Scans the next piece of the stream.
    /// - Returns: The descriptors frames that start or end in `piece`, in order.
    package mutating func scan(_ piece: UnsafeRawBufferPointer) -> [Found] {
        var found: [Found] = []
        var index = 0
        let count = piece.count
        while index < count && !self.isBroken {
            if self.helloRemaining > 0 {
                let take = min(self.helloRemaining, count - index)
                let first = 8 - self.helloRemaining  // the hello's byte at `index`
                if first <= 5 && 5 < first + take {
                    // Byte 5 of the hello (counting from 0) is its flags.
                    self.helloFlags = HelloFlags(rawValue: piece[index + 5 - first])
                }
                self.helloRemaining -= take
                index += take
                continue
            }
            if self.frameRemaining > 0 {
                if self.inDescriptorsFrame {
                    // The count byte: the frame's payload is exactly this byte when well formed.
                    let last = index + self.frameRemaining - 1
                    if last < count {
                        let announced = Int(piece[index])
                        if var current = found.last, current.end == nil {
                            current.end = last
                            current.count = announced
                            found[found.count - 1] = current
                        } else {
                            found.append(Found(start: nil, end: last, count: announced))
                        }
                        self.inDescriptorsFrame = false
                    }
                }
                let take = min(self.frameRemaining, count - index)
                self.frameRemaining -= take
                index += take
                continue
            }
            // A header byte.
            self.header = (self.header << 8) | UInt64(piece[index])
            self.headerCount += 1
            index += 1
            guard self.headerCount == 5 else { continue }
            let length = Int((self.header >> 8) & 0xFFFF_FFFF)
            let kind = UInt8(self.header & 0xFF)
            self.header = 0
            self.headerCount = 0
            guard length >= 1 else {
                self.isBroken = true
                break
            }
            self.frameRemaining = length - 1
            if kind == FrameKind.descriptors.rawValue {
                found.append(Found(start: index - 5, end: nil, count: nil))
                self.inDescriptorsFrame = self.frameRemaining > 0
            }
        }
        return found
    }
}
