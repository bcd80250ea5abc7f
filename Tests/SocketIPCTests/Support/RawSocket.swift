import CSocketIPCTestSupport
import Foundation
import NIOPosix
import SocketIPCTestSupport

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A blocking Unix domain socket client for byte-level tests; each blocking call runs on a thread of its own, so that
/// it never occupies Swift's cooperative threads nor waits behind another test's call in a small shared pool (which
/// on a 2-core machine delays a send past a test's short timeout). Every read has a 60 s timeout (`SO_RCVTIMEO`) as a safety net
/// for a broken test, long enough never to cut a slow but working exchange on a loaded machine.
final class RawSocket: @unchecked Sendable {
    let descriptor: Int32

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// Connects to `path`; with `uid`, as that user (`SO_PEERCRED`), from a thread of its own whose effective uid is
    /// `uid` for the `connect` only (root, Linux: ``csocketipc_test_connect_as``): for a peer charged to a user of
    /// its own, apart from this process's other tests, which all run as root.
    static func connect(to path: String, asUser uid: uid_t? = nil) async throws -> RawSocket {
        try await onOwnThread {
            let descriptor = makeUnixStreamSocket()
            var timeout = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let connected =
                if let uid { csocketipc_test_connect_as(descriptor, path, uid) } else {
                    connectUnixSocket(descriptor, to: path)
                }
            guard connected == 0 else {
                let code = errno
                closeDescriptor(descriptor)
                throw RawSocketError.failed(uid.map { "connect as uid \($0)" } ?? "connect", code)
            }
            return RawSocket(descriptor: descriptor)
        }
    }

    /// The server's side of one connection accepted on `listener`, for tests whose server is a raw socket.
    static func accepting(on listener: Int32) async throws -> RawSocket {
        try await onOwnThread {
            let descriptor = try acceptConnectionNow(on: listener)
            var timeout = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            return RawSocket(descriptor: descriptor)
        }
    }

    /// Writes all of `bytes`, in pieces of `chunkSize` bytes (one `write` call each).
    func write(_ bytes: [UInt8], chunkSize: Int = .max) async throws {
        try await onOwnThread {
            var offset = 0
            while offset < bytes.count {
                let count = min(chunkSize, bytes.count - offset)
                let written = bytes[offset..<(offset + count)].withUnsafeBytes {
                    sendWithoutSignal(self.descriptor, $0)
                }
                guard written > 0 else { throw RawSocketError.failed("write", errno) }
                offset += written
            }
        }
    }

    /// Reads exactly `count` bytes, or fewer if EOF comes first.
    func read(exactly count: Int) async throws -> [UInt8] {
        try await onOwnThread { try self.readBlocking(exactly: count) }
    }

    /// Reads exactly `count` bytes, or fewer if EOF comes first, blocking the calling thread: for a test's loop that
    /// runs on a thread of its own (``onOwnThread(_:)``).
    func readBlocking(exactly count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let got = bytes[offset...].withUnsafeMutableBytes {
                recv(self.descriptor, $0.baseAddress, count - offset, 0)
            }
            if got == 0 { break }
            guard got > 0 else { throw RawSocketError.failed("read", errno) }
            offset += got
        }
        return Array(bytes[..<offset])
    }

    /// Reads until EOF.
    func readToEnd() async throws -> [UInt8] {
        try await onOwnThread {
            var all: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let got = chunk.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, 65536, 0) }
                if got == 0 { return all }
                guard got > 0 else { throw RawSocketError.failed("read", errno) }
                all += chunk[..<got]
            }
        }
    }

    func shutdownWrite() {
        shutdown(self.descriptor, Int32(SHUT_WR))
    }

    func close() {
        closeDescriptor(self.descriptor)
    }
}

enum RawSocketError: Error {
    case failed(String, Int32)
}

/// The bytes of a hello, as a SocketIPC peer sends it.
let helloBytes: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00]
/// The hello a SocketIPC side sends: version 1 with the calls and strict-credit flags (`0x09`), which a version 1
/// peer ignores.
let serverHelloBytes: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x09, 0x00, 0x00]
/// The hello of a peer that speaks calls as version 1 of them does (flags `0x01`: no strict credit), as PROTOCOL.md's
/// peers in other languages send it.
let callsPeerHelloBytes: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x01, 0x00, 0x00]

/// The bytes of a frame: length, kind, optional id, payload.
func frameBytes(kind: UInt8, id: UInt32? = nil, payload: [UInt8]) -> [UInt8] {
    let header = id == nil ? 1 : 5
    let length = UInt32(header + payload.count)
    var bytes = withUnsafeBytes(of: length.bigEndian) { Array($0) }
    bytes.append(kind)
    if let id { bytes += withUnsafeBytes(of: id.bigEndian) { Array($0) } }
    return bytes + payload
}

// MARK: - Writing without blocking, for peers that stop reading

extension RawSocket {
    /// Writes `pieces` in order, each with one `send` (``sendWithoutSignal(_:_:flags:)``: a peer that closed makes it
    /// throw, never raise `SIGPIPE`).
    func send(pieces: [[UInt8]]) async throws {
        try await onOwnThread {
            for piece in pieces {
                var offset = 0
                while offset < piece.count {
                    let sent = piece[offset...].withUnsafeBytes { sendWithoutSignal(self.descriptor, $0) }
                    guard sent > 0 else { throw RawSocketError.failed("send", errno) }
                    offset += sent
                }
            }
        }
    }

    /// Writes as much of `bytes` as the peer takes, and returns how many it took: stops once the socket has not
    /// become writable for `stalledAfterMilliseconds` (the peer stopped reading and the kernel's buffers are full).
    func sendUntilStalled(_ bytes: [UInt8], stalledAfterMilliseconds: Int32 = 1000) async throws -> Int {
        try await onOwnThread {
            var offset = 0
            while offset < bytes.count {
                let sent = bytes[offset...].withUnsafeBytes {
                    sendWithoutSignal(self.descriptor, $0, flags: Int32(MSG_DONTWAIT))
                }
                if sent > 0 {
                    offset += sent
                    continue
                }
                guard sent < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else {
                    throw RawSocketError.failed("send", errno)
                }
                var waiting = pollfd(fd: self.descriptor, events: Int16(POLLOUT), revents: 0)
                if poll(&waiting, 1, stalledAfterMilliseconds) == 0 { break }
            }
            return offset
        }
    }

    /// Writes all of `bytes` while reading `count` bytes, whichever the peer lets progress, so that a peer that
    /// answers as it reads never blocks either side. Returns what was read (less than `count` only at EOF).
    func send(_ bytes: [UInt8], whileReading count: Int) async throws -> [UInt8] {
        try await onOwnThread {
            var offset = 0
            var received: [UInt8] = []
            received.reserveCapacity(count)
            var chunk = [UInt8](repeating: 0, count: 65536)
            while received.count < count {
                var waiting = pollfd(
                    fd: self.descriptor,
                    events: Int16(POLLIN) | (offset < bytes.count ? Int16(POLLOUT) : 0),
                    revents: 0
                )
                guard poll(&waiting, 1, 10_000) > 0 else { throw RawSocketError.failed("poll (timed out)", ETIMEDOUT) }
                if offset < bytes.count && waiting.revents & Int16(POLLOUT) != 0 {
                    let sent = bytes[offset...].withUnsafeBytes {
                        sendWithoutSignal(self.descriptor, $0, flags: Int32(MSG_DONTWAIT))
                    }
                    if sent > 0 { offset += sent }
                }
                if waiting.revents & Int16(POLLIN | POLLHUP) != 0 {
                    let wanted = min(chunk.count, count - received.count)
                    let got = chunk.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, wanted, Int32(MSG_DONTWAIT)) }
                    if got == 0 { break }
                    if got > 0 { received += chunk[..<got] }
                }
            }
            return received
        }
    }
}

extension RawSocket {
    /// Reads until the peer closes: EOF, or a reset (a Unix socket closed with bytes of ours unread reports
    /// `ECONNRESET` once what it had sent is read). Fails only after 10 s of silence.
    func readUntilClosed() async throws -> [UInt8] {
        try await onOwnThread {
            var all: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let got = chunk.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, 65536, 0) }
                if got == 0 || (got < 0 && errno == ECONNRESET) { return all }
                guard got > 0 else { throw RawSocketError.failed("read", errno) }
                all += chunk[..<got]
            }
        }
    }
}

/// The bytes of a going-away frame: length, kind 0x05, reason, text.
func goAwayBytes(reason: UInt8, text: String) -> [UInt8] {
    frameBytes(kind: 0x05, payload: [reason] + Array(text.utf8))
}

/// Runs the blocking `body` on a new thread and returns its result.
func onOwnThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Swift.Result { try body() }) }.start()
    }
}

/// Accepts one connection on `listener` with a plain blocking `accept`, on a thread of its own: the server's side of
/// tests whose server is a raw socket.
func acceptConnection(on listener: Int32) async throws -> Int32 {
    try await onOwnThread { try acceptConnectionNow(on: listener) }
}

/// Accepts one connection on `listener`, blocking the calling thread.
func acceptConnectionNow(on listener: Int32) throws -> Int32 {
    let accepted = accept(listener, nil, nil)
    guard accepted >= 0 else { throw RawSocketError.failed("accept", errno) }
    // Not inherited by a child another test spawns (see makeUnixStreamSocket()).
    _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
    return accepted
}
