import Foundation
import NIOCore

/// Standard input or a file, read on a thread of its own so that no task blocks Swift's cooperative threads; or a
/// buffer already in memory, as one chunk.
///
/// The reader stays at most a few chunks ahead of the consumer, so a message of any size passes through in bounded
/// memory.
struct InputChunks: AsyncSequence {
    typealias Element = ByteBuffer

    /// The descriptor read, until EOF; it stays open. Unused when ``buffer`` is set.
    var descriptor: Int32 = STDIN_FILENO
    /// The only chunk, instead of reading ``descriptor``.
    var buffer: ByteBuffer?

    /// One chunk: `buffer`.
    init(buffer: ByteBuffer) { self.buffer = buffer }

    /// The chunks read from `descriptor` (standard input by default).
    init(descriptor: Int32 = STDIN_FILENO) { self.descriptor = descriptor }

    /// How many bytes one `read` takes at most.
    static let chunkSize = 64 * 1024
    /// How many chunks the reader may be ahead of the consumer.
    static let chunksAhead = 4

    /// Chunks of standard input as they come, until EOF.
    static func standardInput() -> InputChunks { InputChunks() }

    func makeAsyncIterator() -> Iterator {
        if let buffer = self.buffer { return Iterator(single: buffer) }
        let credits = Credits(Self.chunksAhead)
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
        let descriptor = self.descriptor
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: Self.chunkSize)
            while true {
                credits.take()
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count > 0 {
                    continuation.yield(ByteBuffer(bytes: buffer[0..<count]))
                } else if count == 0 {
                    continuation.finish()
                    return
                } else if errno != EINTR {
                    let message = String(cString: strerror(errno))
                    continuation.finish(throwing: UsageError(message: "could not read the input: \(message)"))
                    return
                } else {
                    credits.give()
                }
            }
        }
        reader.start()
        return Iterator(chunks: stream.makeAsyncIterator(), credits: credits)
    }

    /// Hands out the chunks the reader thread read, and lets it read one more for each.
    struct Iterator: AsyncIteratorProtocol {
        var chunks: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator?
        let credits: Credits?
        var single: ByteBuffer?

        init(chunks: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator, credits: Credits) {
            self.chunks = chunks
            self.credits = credits
        }

        init(single: ByteBuffer) {
            self.chunks = nil
            self.credits = nil
            self.single = single
        }

        mutating func next() async throws -> ByteBuffer? {
            guard self.chunks != nil else {
                defer { self.single = nil }
                return self.single
            }
            let chunk = try await self.chunks!.next()
            // A stream ends, rather than throws, when its consumer's task is cancelled: that is no end of the input,
            // and a message cut short there must not go out as a whole one (send --timeout on a slow pipe).
            if chunk == nil { try Task.checkCancellation() }
            if chunk != nil { self.credits?.give() }
            return chunk
        }
    }

    /// How many more chunks the reader may read: it takes one before each read, the consumer gives one back for each
    /// chunk it takes. (Not a `DispatchSemaphore`: libdispatch traps when one is released with a value below its
    /// initial one, as it is when the consumer stops early.)
    final class Credits: @unchecked Sendable {
        private let condition = NSCondition()
        private var available: Int

        init(_ available: Int) { self.available = available }

        /// Waits until a credit is available and takes it.
        func take() {
            self.condition.lock()
            while self.available == 0 { self.condition.wait() }
            self.available -= 1
            self.condition.unlock()
        }

        /// Gives back a credit.
        func give() {
            self.condition.lock()
            self.available += 1
            self.condition.signal()
            self.condition.unlock()
        }
    }
}
