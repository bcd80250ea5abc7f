import NIOCore

/// The bytes of a frame that spans reads, gathered until the frame is whole.
///
/// Small frames are copied into one buffer as their bytes come. A large frame is kept as the slices the reads
/// delivered and copied once, into a buffer of exactly its size, when its last byte has arrived: memory grows only
/// with bytes that really came (never with what the length field claims), and each byte is copied once instead of
/// again at every doubling of a growing buffer.
struct FrameAssembler {
    /// Frames needing more than this many bytes are gathered as slices rather than copied piece by piece.
    static let gatheringThreshold = 64 * 1024

    /// The start of the bytes, contiguous; it holds the length field whenever ``tail`` is not empty.
    private(set) var head: ByteBuffer
    private var tail: [ByteBuffer] = []
    private var tailBytes = 0

    init(_ bytes: ByteBuffer) {
        self.head = bytes
    }

    /// All bytes held.
    var readableBytes: Int { self.head.readableBytes + self.tailBytes }

    /// Adds the next bytes of the stream.
    /// - Parameters:
    ///   - piece: Bytes that follow those held.
    ///   - frameLength: How many bytes the frame being assembled needs in all, as far as known.
    mutating func append(_ piece: ByteBuffer, frameLength: Int) {
        if frameLength > Self.gatheringThreshold && self.head.readableBytes >= 4 {
            self.tail.append(piece)
            self.tailBytes += piece.readableBytes
        } else {
            var piece = piece
            self.head.writeBuffer(&piece)
        }
    }

    /// Everything held, as one contiguous buffer (copied once if it was gathered).
    mutating func takeContiguous() -> ByteBuffer {
        guard !self.tail.isEmpty else { return self.head }
        var whole = ByteBufferAllocator().buffer(capacity: self.readableBytes)
        whole.writeImmutableBuffer(self.head)
        for piece in self.tail {
            whole.writeImmutableBuffer(piece)
        }
        self.tail = []
        self.tailBytes = 0
        self.head = whole
        return whole
    }
}
