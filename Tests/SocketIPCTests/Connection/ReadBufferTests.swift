import CSocketIPCLinux
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@testable import SocketIPCRuntime

/// A connection keeps no large read buffer while it is idle (found by a review: NIO's pool of a channel's read
/// buffers, grown to its largest read, left 64 idle connections holding +113 MiB after one 6 MiB burst each).
@Suite("Read buffers")
struct ReadBufferTests {
    @Test("NIO is given no size to pool by, and after a burst of full 1 MiB reads, small reads get small buffers")
    func smallReadsAfterABurst() {
        let allocator = UnpooledAdaptiveRecvAllocator(minimum: 64, initial: 128, maximum: 1024 * 1024)
        #expect(allocator.nextBufferSize() == nil, "NIO would keep buffers per channel to reuse by this size")
        // NIO's pool, as a channel with the default maxMessagesPerRead (4) holds it.
        var pool = NIOPooledRecvBufferAllocator(capacity: 4, recvAllocator: allocator)
        let bytes = ByteBufferAllocator()
        var largest = 0
        for _ in 0..<20 {
            let (buffer, filled) = pool.buffer(allocator: bytes) { buffer -> Int in
                let room = buffer.writableBytes
                buffer.writeRepeatingByte(0x61, count: room)
                return room
            }
            largest = max(largest, buffer.storageCapacity)
            pool.record(actualReadBytes: filled)
        }
        #expect(largest == 1024 * 1024, "the reads grew to the largest buffer")
        var last = 0
        for _ in 0..<40 {
            let (buffer, _) = pool.buffer(allocator: bytes) { buffer in buffer.writeString("small") }
            last = buffer.storageCapacity
            pool.record(actualReadBytes: 5)
        }
        // With NIO's own adaptive allocator the pool hands the 1 MiB buffers out again, and keeps them.
        #expect(last <= 4096, "a small read still got a buffer of \(last) bytes")
    }

    @Test("large blocks freed on a thread are kept for its next large read buffers, at most four; small ones are not")
    func keptBlocks() {
        let size = 1024 * 1024
        // Blocks kept on this thread before (read buffers that other tests' tasks released here) are taken first, by
        // allocations of the smallest size kept, and freed for good: otherwise smaller ones would hold the slots.
        Self.dropKeptBlocks()
        var blocks: [UnsafeMutableRawPointer] = (0..<6).map { _ in csocketipc_read_buffer_allocate(size)! }
        let freed = Set(blocks)
        for block in blocks { csocketipc_read_buffer_free(block) }
        blocks = (0..<6).map { _ in csocketipc_read_buffer_allocate(size)! }
        // The four kept come back first; the other two are new (or malloc(3) reused freed memory).
        #expect(blocks.prefix(4).allSatisfy { freed.contains($0) })
        for block in blocks { csocketipc_read_buffer_free(block) }
        let small = csocketipc_read_buffer_allocate(100)!
        csocketipc_read_buffer_free(small)
        // Leave nothing kept for the next test on this thread.
        Self.dropKeptBlocks()
    }

    /// Takes the blocks kept on this thread (at most four, each of 256 KiB or more) and frees them with free(3).
    static func dropKeptBlocks() {
        for block in (0..<4).map({ _ in csocketipc_read_buffer_allocate(256 * 1024)! }) { free(block) }
    }
}
