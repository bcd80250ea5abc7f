import CSocketIPCLinux
import NIOCore
import SocketIPCCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Large payloads in sealed shared memory (`memfd`), PROTOCOL.md "Shared payloads": the sender copies the bytes into
/// a new `memfd` once, seals it (`F_SEAL_SHRINK`, `F_SEAL_GROW`, `F_SEAL_WRITE`, `F_SEAL_SEAL`) and passes it; the
/// receiver checks the seals, maps it read-only and copies the bytes out once. The payload never goes through the
/// socket (nor, on a relayed connection, through the relay).
///
/// The seals are what make the receiver safe: without `F_SEAL_SHRINK` the sender could truncate the memory while the
/// receiver reads its mapping, which raises `SIGBUS`; without `F_SEAL_WRITE` it could change the bytes after the
/// receiver checked them. A receiver never maps a descriptor that is not sealed.
enum SharedPayload {
    /// Makes a sealed `memfd` holding `payload`'s readable bytes.
    /// - Returns: The descriptor, which the caller owns.
    /// - Throws: `SocketIPCError` with code `systemCall` when the memory cannot be made, written or sealed.
    static func make(_ payload: ByteBuffer) throws -> Int32 {
        #if os(Linux)
        let descriptor = csocketipc_memfd_create("socketipc-payload")
        guard descriptor >= 0 else { throw SocketIPCError.systemCall("memfd_create", errno: errno) }
        do {
            var offset = 0
            try payload.withUnsafeReadableBytes { bytes in
                while offset < bytes.count {
                    let written = pwrite(descriptor, bytes.baseAddress! + offset, bytes.count - offset, off_t(offset))
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw SocketIPCError.systemCall("write to a memfd", errno: errno)
                    }
                    offset += written
                }
            }
            guard csocketipc_seal_all(descriptor) == 0 else {
                throw SocketIPCError.systemCall("fcntl(F_ADD_SEALS) of a memfd", errno: errno)
            }
            return descriptor
        } catch {
            _ = close(descriptor)
            throw error
        }
        #else
        throw SocketIPCError(.invalidConfiguration, "shared payloads are available on Linux only")
        #endif
    }

    #if os(Linux)
    /// The offset of the first hole in `descriptor` (`lseek` with `SEEK_HOLE`: the end of the file when there is
    /// none), or -1; the file offset, which the peer's descriptor shares, is put back as it was.
    private static func firstHole(in descriptor: Int32) -> Int {
        let seekHole: Int32 = 4  // SEEK_HOLE, Linux 3.1 and later
        let offset = lseek(descriptor, 0, SEEK_CUR)
        let hole = lseek(descriptor, 0, seekHole)
        if offset >= 0 { _ = lseek(descriptor, offset, SEEK_SET) }
        return Int(hole)
    }
    #endif

    /// Maps the `length` bytes of the sealed shared memory `descriptor` read-only, and closes the descriptor (as one a
    /// peer passed, charged to `user`: it may be a lingering socket instead, see ``closePassedDescriptors(_:passedBy:)``).
    /// - Throws: `SocketIPCError` with code `protocolViolation` when the descriptor is not sealed shared memory of
    ///   exactly `length` bytes, all of them backed by memory (not sparse); `systemCall` when it cannot be mapped.
    static func map(_ descriptor: Int32, length: Int, passedBy user: UInt32?) throws -> MappedPayload {
        defer { closePassedDescriptors([descriptor], passedBy: user) }
        #if os(Linux)
        guard csocketipc_is_sealed(descriptor) == 1 else {
            throw SocketIPCError(
                .protocolViolation,
                "the peer passed a shared payload that is not sealed shared memory (F_SEAL_SHRINK, F_SEAL_GROW, "
                    + "F_SEAL_WRITE and F_SEAL_SEAL)"
            )
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0, Int(status.st_size) == length else {
            throw SocketIPCError(
                .protocolViolation,
                "the peer's shared payload holds \(status.st_size) bytes, not the \(length) it announced"
            )
        }
        // A hole in shared memory reads as zeros, but the read fault of a mapping allocates its page, charged to this
        // process, and the page stays while the peer keeps the memfd: a peer that passed sealed memfds it had only
        // truncated to 16 MiB made a server allocate 640 MiB for 40 of them at no cost of its own, until its memory
        // cgroup killed it (found by a review). An honest sender writes its payload before sealing it.
        // Blocks allocated past the end (`fallocate` with `FALLOC_FL_KEEP_SIZE`) count in `st_blocks` too, so the
        // first hole must also lie at the end or beyond (`SEEK_HOLE`; found by a review of the first check).
        guard Int(status.st_blocks) * 512 >= length, length == 0 || Self.firstHole(in: descriptor) >= length else {
            throw SocketIPCError(
                .protocolViolation,
                "the peer's shared payload of \(length) bytes is sparse (not all of it is backed by memory): "
                    + "reading it would allocate the rest, charged to this side"
            )
        }
        guard length > 0 else { return MappedPayload(mapping: nil, count: 0) }
        if length < MappedPayload.smallestMapped {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 16)
            var offset = 0
            while offset < length {
                let read = pread(descriptor, copy + offset, length - offset, off_t(offset))
                if read < 0 && errno == EINTR { continue }
                guard read > 0 else {
                    let error = SocketIPCError.systemCall("read of a shared payload", errno: read < 0 ? errno : EIO)
                    copy.deallocate()
                    throw error
                }
                offset += read
            }
            return MappedPayload(copy: copy, count: length)
        }
        guard let mapping = mmap(nil, length, PROT_READ, MAP_SHARED, descriptor, 0), mapping != MAP_FAILED else {
            throw SocketIPCError.systemCall("mmap of a shared payload", errno: errno)
        }
        return MappedPayload(mapping: UnsafeRawPointer(mapping), count: length)
        #else
        throw SocketIPCError(.invalidConfiguration, "shared payloads are available on Linux only")
        #endif
    }
}

extension Connection {
    /// The sealed shared memory `payload` travels in, when it should: on a connection whose peer takes shared
    /// payloads, for a payload of at least ``ConnectionOptions/sharedPayloadThreshold`` bytes, while the peer has not
    /// left more than ``sharedMemoryUnreadLimit`` bytes of such memory unread. `nil` otherwise, and when the memory
    /// cannot be made (the payload then goes through the socket).
    func sharedMemory(for payload: ByteBuffer) -> Int32? {
        guard payload.readableBytes >= self.options.sharedPayloadThreshold, self.takesSharedPayloads,
            let relay = self.descriptorPassing?.relay,
            relay.reserveSharedMemory(payload.readableBytes, limit: self.sharedMemoryUnreadLimit)
        else { return nil }
        do {
            return try SharedPayload.make(payload)
        } catch {
            relay.releaseSharedMemory(payload.readableBytes)
            self.logger.debug("a shared payload could not be made; it goes through the socket", metadata: ["error": "\(errorText(error))"])
            return nil
        }
    }

    /// The most bytes of shared memory this side makes for payloads that the peer has not read yet: one largest
    /// message (``ConnectionOptions/maximumMessageSize``, 16 MiB by default) or the write watermark, whichever is
    /// more. Beyond it, payloads go through the socket, as if there were no shared memory.
    var sharedMemoryUnreadLimit: Int {
        max(self.options.effectiveMaximumMessageSize, self.options.writeBufferHighWatermark)
    }

    /// Whether shared payloads can travel on this connection: both sides pass descriptors and the peer's hello says
    /// it takes shared payloads.
    var takesSharedPayloads: Bool {
        self.descriptorPassing != nil
            && HelloFlags(rawValue: self.calls.peerFlags.load(ordering: .relaxed)).contains([.descriptors, .sharedPayloads])
    }
}
