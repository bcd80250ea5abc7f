#if os(Linux)
@_spi(CustomByteBufferAllocator) import NIOCore
import CSocketIPCLinux
#else
import NIOCore
#endif

/// Sizes a connection's read buffers as NIO's `AdaptiveRecvByteBufferAllocator` does (doubling after a read that
/// filled the buffer, halving after two that filled less than half of it), but keeps them out of NIO's pool of a
/// channel's read buffers: each read gets a buffer of its own, freed once what was read into it is handed out.
///
/// NIO's pool (`NIOPooledRecvBufferAllocator`, one per channel) keeps up to `maxMessagesPerRead` (4) read buffers for
/// reuse, grown in place to the largest size the connection ever needed, for as long as the connection is open: a
/// peer that sent one burst left its idle connection holding about 1.8 MiB (found by a review: +113 MiB for 64 idle
/// connections, about 1.8 GiB for one user's 1,024). Without a size to pool by (`nextBufferSize()` is `nil`), NIO
/// keeps only a connection's first few buffers, of a few KiB together, and asks for a new one per read.
///
/// Fresh memory for each large read would page-fault (W4 bulk lost 14 % so): on Linux, large read buffers come from
/// a few blocks kept per thread instead (`csocketipc_read_buffer_allocate`), as Netty's pooled allocator keeps its
/// memory per thread rather than per channel. Elsewhere (untested), NIO's allocator.
struct UnpooledAdaptiveRecvAllocator: RecvByteBufferAllocator {
    private var adaptive: AdaptiveRecvByteBufferAllocator

    /// Buffers from `initial` bytes, between `minimum` and `maximum` (each rounded to a power of 2).
    init(minimum: Int, initial: Int, maximum: Int) {
        self.adaptive = AdaptiveRecvByteBufferAllocator(minimum: minimum, initial: initial, maximum: maximum)
    }

    /// A buffer of the size the reads so far call for.
    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        #if os(Linux)
        self.adaptive.buffer(allocator: Self.readBuffers)
        #else
        self.adaptive.buffer(allocator: allocator)
        #endif
    }

    /// Records a read's size; returns whether the next buffer may be larger.
    mutating func record(actualReadBytes: Int) -> Bool {
        self.adaptive.record(actualReadBytes: actualReadBytes)
    }

    #if os(Linux)
    /// Memory for read buffers whose large blocks are kept per thread for the next large read.
    static let readBuffers = ByteBufferAllocator(
        allocate: { csocketipc_read_buffer_allocate($0) },
        reallocate: { csocketipc_read_buffer_reallocate($0, $1, $2) },
        deallocate: { csocketipc_read_buffer_free($0) },
        copy: { $0.copyMemory(from: $1, byteCount: $2) }
    )
    #endif
}
