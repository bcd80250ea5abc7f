import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A payload that arrived in sealed shared memory (PROTOCOL.md "Shared payloads"), mapped read-only: its bytes,
/// without the copy into a buffer that an ordinary payload costs. (A payload under 64 KiB is copied instead: for so
/// few bytes a copy is cheaper than a mapping, and it keeps a peer from using up the process's mappings.)
///
/// A handler gets one by implementing ``ConnectionHandler/didReceiveMessage(_:on:)-(MappedPayload,_)`` or
/// ``ConnectionHandler/didReceiveRequest(_:reply:on:)-(MappedPayload,_,_)``; without them, the payload is copied
/// into a `ByteBuffer` once and handed to the ordinary methods. The memory is sealed against writing, shrinking and
/// growing (the connection checked it before mapping it), so its bytes cannot change while they are read and reading
/// them cannot raise `SIGBUS`: it is as safe to parse in place as a buffer of one's own.
///
/// The mapping lasts as long as this object: keep it to keep the bytes (it is `Sendable`), and drop it to unmap them.
/// Its pages count against the process's memory like any shared memory, not against the connection's buffers. It is a
/// collection of the payload's bytes, indexed from 0.
public final class MappedPayload: RandomAccessCollection, @unchecked Sendable {
    // @unchecked: the bytes are read-only (a mapping sealed against writes, or memory of its own) and never change.
    private let base: UnsafeRawPointer?
    /// Whether `base` is a mapping (unmapped by `deinit`) or memory allocated for a copy (deallocated).
    private let isMapping: Bool

    /// The payload's length in bytes.
    public let count: Int

    /// Payloads shorter than this are copied rather than mapped: a copy of so few bytes costs less than a mapping,
    /// and a peer sending many tiny payloads to a handler that keeps them cannot use up the process's mappings
    /// (`vm.max_map_count`, 65,530 by default), past which every `mmap` of the process fails, `malloc`'s too.
    static let smallestMapped = 64 * 1024

    /// Takes over the read-only mapping of `count` bytes at `base` (`nil` for an empty payload), which `deinit`
    /// unmaps.
    init(mapping base: UnsafeRawPointer?, count: Int) {
        self.base = base
        self.isMapping = true
        self.count = count
    }

    /// Takes over `count` bytes at `base` allocated with `UnsafeMutableRawPointer.allocate`, which `deinit`
    /// deallocates.
    init(copy base: UnsafeMutableRawPointer, count: Int) {
        self.base = UnsafeRawPointer(base)
        self.isMapping = false
        self.count = count
    }

    deinit {
        guard let base else { return }
        if !self.isMapping {
            UnsafeMutableRawPointer(mutating: base).deallocate()
            return
        }
        #if os(Linux) || canImport(Darwin)
        _ = munmap(UnsafeMutableRawPointer(mutating: base), self.count)
        #endif
    }

    /// 0.
    public var startIndex: Int { 0 }

    /// ``count``.
    public var endIndex: Int { self.count }

    /// The byte at `position`, which must be within `0..<count`.
    public subscript(position: Int) -> UInt8 {
        precondition(position >= 0 && position < self.count, "index \(position) is outside 0..<\(self.count)")
        return self.base!.load(fromByteOffset: position, as: UInt8.self)
    }

    /// Calls `body` with the mapped bytes; the pointer is valid only during the call.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try withExtendedLifetime(self) { () throws(Failure) -> Result in
            try body(UnsafeRawBufferPointer(start: self.base, count: self.count))
        }
    }

    /// Calls `body` with the mapped bytes; the pointer is valid only during the call. The collection's own form.
    public func withContiguousStorageIfAvailable<Result>(
        _ body: (UnsafeBufferPointer<UInt8>) throws -> Result
    ) rethrows -> Result? {
        try withExtendedLifetime(self) {
            try body(UnsafeBufferPointer(start: self.base?.assumingMemoryBound(to: UInt8.self), count: self.count))
        }
    }

    /// The bytes copied into a new buffer: one copy, what the ordinary handler methods get.
    public func copyToBuffer(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: self.count)
        self.withUnsafeBytes { _ = buffer.writeBytes($0) }
        return buffer
    }
}
