import NIOCore

/// The bytes a framed connection has read and not yet handed out, and whether reading is paused or held.
struct InboundBuffer {
    /// The start of a frame a read left unfinished; while paused, also the bytes not yet looked at.
    var partial: FrameAssembler?
    /// The requests, messages and call frames read while paused, as their frames' bytes in order: they come before
    /// the bytes of ``partial`` once the pause ends.
    var held: ByteBuffer?
    /// The ids of the call opens among ``held``: credit for those calls is held too, not handed out before them.
    var heldCallOpens: Set<UInt32> = []
    /// How many descriptors frames are among ``held`` (their groups kept by `DescriptorPassing.hold(_:)`): those
    /// beyond it that the connection keeps are in ``partial``, held once and handed back when a pause ended.
    var heldDescriptorFrames = 0
    /// Whether requests, messages and call frames are not handed out until an answer makes room for more requests.
    var isPaused = false
    /// Whether frames are not handed out until the event loop's next turn, after a payload in shared memory or a
    /// read's budget of frames (``DecodeStep/yieldTurn``); no `read()` is passed on meanwhile, and reads already under
    /// way add to ``partial``.
    var isYielding = false
    /// Whether the turn given up (``isYielding``) ends only once the channel is writable again: a server's frames
    /// kept from reads made before it could no longer write are not handed out while it cannot.
    var yieldWaitsForWritability = false
    /// Whether the channel closed: what is kept is handed out at once, with no turn given up
    /// (``DecodeStep/yieldTurn`` is taken as going on).
    var closing = false
    /// Whether a `read()` from the channel was held back; it is passed on once nothing holds reads any more.
    var readHeld = false

    /// The bytes kept: held frames and the start of the frame being read.
    var bytesKept: Int {
        (self.held?.readableBytes ?? 0) + (self.partial?.readableBytes ?? 0)
    }

    /// Adds the bytes of a read after those kept.
    mutating func append(_ bytes: ByteBuffer) {
        if self.partial != nil {
            self.partial!.append(bytes)
        } else {
            self.partial = Self.keep(bytes)
        }
    }

    /// Adds a whole frame's bytes to the frames held while paused.
    mutating func hold(_ frame: ByteBuffer) {
        if self.held == nil {
            self.held = ByteBufferAllocator().buffer(capacity: max(frame.readableBytes, 64))
        }
        self.held!.writeImmutableBuffer(frame)
    }

    /// Whether the first frame held is a request (kind `0x02`).
    var heldStartsWithRequest: Bool {
        guard let held = self.held else { return false }
        return held.getInteger(at: held.readerIndex + 4, as: UInt8.self) == FrameKind.request.rawValue
    }

    /// Ends a pause: the frames held come first, then what is still kept.
    mutating func endPause() {
        self.isPaused = false
        self.heldCallOpens = []
        self.heldDescriptorFrames = 0
        guard var held = self.held.take() else { return }
        if let rest = self.partial.take() { held.writeImmutableBuffer(rest.bytes) }
        self.partial = FrameAssembler(held)
    }

    /// Drops everything kept: after a failure or the peer's going-away with an error, nothing more is handed out
    /// (later reads are dropped as they come, since the connection no longer handles frames). A pause or a turn given up no longer holds reads (a server's wait to write
    /// still does: its peer reads nothing, so reading on would not let it see the going-away).
    mutating func discard() {
        self.partial = nil
        self.held = nil
        self.heldCallOpens = []
        self.heldDescriptorFrames = 0
        self.isPaused = false
        self.isYielding = false
        self.yieldWaitsForWritability = false
    }

    /// The memory the bytes kept hold: the storage of the buffers they are in, which for a rest kept where its read
    /// left it is the whole read buffer (up to 1 MiB), however few bytes it holds. What a connection is charged for
    /// (``IncomingBytesCharge``): a review kept 60 KB of each 1 MiB read buffer, on 1,000 connections, and held 1 GB
    /// that a count of the bytes saw as 60 MB.
    var memoryKept: Int {
        (self.held?.storageCapacity ?? 0) + (self.partial?.bytes.storageCapacity ?? 0)
    }

    /// The start of a frame a read left unfinished, kept for the next read. A small rest is copied out of the read
    /// buffer, so that NIO can reuse that buffer; a large one is kept where it is until the next read adds to it.
    /// (When a read ends on a frame boundary nothing is kept, so an idle connection holds no read buffer.)
    static func keep(_ rest: ByteBuffer) -> FrameAssembler {
        guard rest.readableBytes <= 4096 else { return FrameAssembler(rest) }
        var copy = ByteBufferAllocator().buffer(capacity: max(rest.readableBytes, 64))
        copy.writeImmutableBuffer(rest)
        return FrameAssembler(copy)
    }
}
