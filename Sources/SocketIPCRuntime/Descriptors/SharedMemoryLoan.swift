import CSocketIPCLinux
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writable shared memory (a `memfd`) lent to a sender, to fill in place and send with
/// ``Connection/send(_:count:)``: the payload's bytes are never copied on the sending side, the way iceoryx2's
/// publishers loan a sample.
///
/// ```swift
/// var loan = try SharedMemoryLoan(capacity: 4 << 20)
/// let count = try loan.withUnsafeMutableBytes { bytes in try file.read(into: bytes) }
/// try await connection.send(loan, count: count)
/// ```
///
/// Sending it unmaps the memory, seals it (`F_SEAL_SHRINK`, `F_SEAL_GROW`, `F_SEAL_WRITE`, `F_SEAL_SEAL`) and passes
/// it as a shared payload (PROTOCOL.md "Shared payloads"), so the sender can no longer change what the receiver
/// reads. On a connection whose peer does not take shared payloads, the bytes are copied into a buffer and go
/// through the socket instead: a loan works on every connection, and saves its copy where descriptors pass.
///
/// A loan is used once: sending consumes it. One dropped without being sent unmaps and frees its memory. Its mapping is
/// not inherited by a child process (`MADV_DONTFORK`), so a `fork` meanwhile does not keep it from being sealed; if
/// another process maps the memory writable all the same (through `/proc/PID/fd`), the bytes are copied instead.
///
/// Each loan is fresh memory: the kernel allocates and zeroes its pages as they are first written, which costs more
/// than copying them on a machine with slow page faults, such as a virtual machine (BENCHMARKS.md, "Large payloads"). Linux; elsewhere (untested) the
/// initializer throws `invalidConfiguration`.
public struct SharedMemoryLoan: ~Copyable {
    private let descriptor: Int32
    private let base: UnsafeMutableRawPointer?

    /// The most bytes the loan holds, as asked for.
    public let capacity: Int

    /// Makes `capacity` bytes of shared memory, mapped writable and zero-filled; its pages are allocated as they are
    /// first written.
    /// - Parameter capacity: Bytes, 0 or more; at most a connection's ``ConnectionOptions/maximumMessageSize`` can
    ///   be sent.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` for a negative capacity, `systemCall` when the
    ///   memory cannot be made (`memfd_create`, `ftruncate`, `mmap`); `invalidConfiguration` outside Linux.
    public init(capacity: Int) throws {
        guard capacity >= 0 else {
            throw SocketIPCError(.invalidConfiguration, "a shared memory loan needs a capacity of 0 or more, not \(capacity)")
        }
        #if os(Linux)
        let descriptor = csocketipc_memfd_create("socketipc-loan")
        guard descriptor >= 0 else { throw SocketIPCError.systemCall("memfd_create", errno: errno) }
        guard ftruncate(descriptor, off_t(capacity)) == 0 else {
            let error = SocketIPCError.systemCall("ftruncate of a memfd", errno: errno)
            _ = close(descriptor)
            throw error
        }
        var base: UnsafeMutableRawPointer? = nil
        if capacity > 0 {
            guard let mapping = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0),
                mapping != MAP_FAILED
            else {
                let error = SocketIPCError.systemCall("mmap of a memfd", errno: errno)
                _ = close(descriptor)
                throw error
            }
            // A child forked meanwhile must not inherit the writable mapping: while any process maps the memory
            // writable, the kernel refuses F_SEAL_WRITE, and the loan could not be sent sealed.
            _ = madvise(mapping, capacity, MADV_DONTFORK)
            base = mapping
        }
        self.descriptor = descriptor
        self.base = base
        self.capacity = capacity
        #else
        throw SocketIPCError(.invalidConfiguration, "shared memory loans are available on Linux only")
        #endif
    }

    deinit {
        #if os(Linux)
        if let base { _ = munmap(base, self.capacity) }
        _ = close(self.descriptor)
        #endif
    }

    /// Calls `body` with the loan's ``capacity`` bytes to fill; the pointer is valid only during the call.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public mutating func withUnsafeMutableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeMutableRawBufferPointer(start: self.base, count: self.capacity))
    }

    /// Calls `body` with the loan's bytes to read; the pointer is valid only during the call.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: self.base, count: self.capacity))
    }

    /// Ends the loan: unmaps the memory, cuts it to `count` bytes and seals it, for sending as a shared payload.
    /// If the memory cannot be cut or sealed (another process still maps it writable), its first `count` bytes are
    /// read into a buffer instead, to go through the socket. The memory is closed in every case but the first.
    /// - Throws: `SocketIPCError` with code `systemCall` when neither works.
    consuming func seal(count: Int, allocator: ByteBufferAllocator) throws -> SealedLoan {
        let descriptor = self.descriptor
        let base = self.base
        let capacity = self.capacity
        discard self
        #if os(Linux)
        if let base { _ = munmap(base, capacity) }
        // Once unmapped, nothing of this process can write it: the seal can be added (F_SEAL_WRITE fails while a
        // writable shared mapping exists).
        if count == capacity || ftruncate(descriptor, off_t(count)) == 0, csocketipc_seal_all(descriptor) == 0 {
            return .sealed(descriptor)
        }
        defer { _ = close(descriptor) }
        var buffer = allocator.buffer(capacity: count)
        var offset = 0
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { bytes in
            while offset < count {
                let read = pread(descriptor, bytes.baseAddress! + offset, count - offset, off_t(offset))
                if read < 0 && errno == EINTR { continue }
                if read <= 0 { throw SocketIPCError.systemCall("read of a shared memory loan", errno: errno) }
                offset += read
            }
            return count
        }
        return .copied(buffer)
        #else
        _ = (descriptor, base, capacity, allocator)
        throw SocketIPCError(.invalidConfiguration, "shared memory loans are available on Linux only")
        #endif
    }

    /// The first `count` bytes copied into a buffer, for a connection that cannot take the memory itself.
    func copy(count: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: count)
        self.withUnsafeBytes { _ = buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
        return buffer
    }
}

/// A loan once it is ended: its sealed memory, or its bytes copied when the memory could not be sealed.
enum SealedLoan {
    case sealed(Int32)
    case copied(ByteBuffer)
}

extension SharedMemoryLoan: @unchecked Sendable {}
// @unchecked: a loan is not copyable, so one owner at a time fills the memory it maps.

extension Connection {
    /// Sends the first `count` bytes of `loan` as a one-way message, without copying them: the loan's memory itself
    /// travels, sealed, as a shared payload. The peer's handler receives it as any message (a `ByteBuffer`, or a
    /// ``MappedPayload`` if it asks for one).
    ///
    /// On a connection that cannot pass shared memory (descriptor passing off on either side, see
    /// ``ConnectionOptions/maximumDescriptorsPerMessage``, or a peer that predates it), the bytes are copied and sent
    /// through the socket, as ``send(_:)`` would. Returns once the message is queued; suspends first while the peer
    /// is not reading, as ``send(_:)`` does.
    /// - Parameters:
    ///   - loan: The filled loan; it is consumed.
    ///   - count: How many of its bytes to send, 0 up to its ``SharedMemoryLoan/capacity`` and
    ///     ``ConnectionOptions/maximumMessageSize``.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` when `count` is outside the loan,
    ///   `messageTooLarge`, `systemCall` when the memory can be neither sealed nor read, or `connectionClosed` (or the reason the
    ///   peer gave when it went away) once the connection is closed.
    nonisolated(nonsending) public func send(_ loan: consuming SharedMemoryLoan, count: Int) async throws {
        guard count >= 0, count <= loan.capacity else {
            throw SocketIPCError(
                .invalidConfiguration,
                "cannot send \(count) bytes of a shared memory loan of \(loan.capacity) bytes"
            )
        }
        guard count <= self.options.effectiveMaximumMessageSize else {
            throw SocketIPCError(
                .messageTooLarge,
                "the message of \(count) bytes exceeds the maximum of \(self.options.effectiveMaximumMessageSize) bytes "
                    + "(ConnectionOptions.maximumMessageSize)"
            )
        }
        let mustWait: Bool
        if self.takesSharedPayloads {
            switch try loan.seal(count: count, allocator: self.channel.allocator) {
            case .sealed(let memory):
                mustWait = try self.queueShared(.message, id: 0, length: count, memory: memory)
            case .copied(let bytes):
                self.logger.debug("a shared memory loan could not be sealed (another process maps it writable); its bytes are copied")
                mustWait = try self.queueMessage(bytes)
            }
        } else {
            mustWait = try self.queueMessage(loan.copy(count: count, allocator: self.channel.allocator))
        }
        if mustWait { try await self.waitUntilWritable() }
    }
}
