import NIOCore

/// The messages a call received and its consumer has not taken yet, in order: a FIFO queue that allocates nothing
/// while it holds at most one message, which is all a unary call ever holds (a `CircularBuffer` allocates room for 16
/// when it is made).
@usableFromInline
package struct InboundMessages {
    /// The only message, while ``more`` is `nil`.
    @usableFromInline
    var single: ByteBuffer?
    /// Every message, once a second one arrived while the first was held; kept (empty or not) from then on.
    @usableFromInline
    var more: CircularBuffer<ByteBuffer>?

    /// An empty queue.
    @inlinable
    package init() {}

    /// How many messages are held.
    @inlinable
    package var count: Int { (self.single == nil ? 0 : 1) + (self.more?.count ?? 0) }

    /// Adds `message` at the end.
    @inlinable
    package mutating func append(_ message: ByteBuffer) {
        if self.more != nil {
            self.more!.append(message)
        } else if let first = self.single.take() {
            var more = CircularBuffer<ByteBuffer>(initialCapacity: 4)
            more.append(first)
            more.append(message)
            self.more = more
        } else {
            self.single = message
        }
    }

    /// Takes the first message, if there is one.
    @inlinable
    package mutating func popFirst() -> ByteBuffer? {
        if let first = self.single.take() { return first }
        return self.more?.popFirst()
    }

    /// Drops every message.
    @inlinable
    package mutating func removeAll() {
        self.single = nil
        self.more = nil
    }
}
