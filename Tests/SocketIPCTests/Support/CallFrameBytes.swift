import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Call frames (PROTOCOL.md, "Calls") spelled out byte by byte, and a bounded read, for the tests that speak the
// protocol from a raw socket.

/// A call open frame (kind 0x06): flags 0, the timeout in nanoseconds (0: none), the method's name.
func callOpenBytes(id: UInt32, method: String, timeoutNanoseconds: UInt64 = 0) -> [UInt8] {
    let name = Array(method.utf8)
    let payload = [0] + withUnsafeBytes(of: timeoutNanoseconds.bigEndian) { Array($0) } + [UInt8(name.count)] + name
    return frameBytes(kind: 0x06, id: id, payload: payload)
}

/// A call end frame (kind 0x08) with status ok and no code, text or details: `00000009 08 <id> 00 00 0000`.
func callEndOKBytes(id: UInt32) -> [UInt8] {
    frameBytes(kind: 0x08, id: id, payload: [0x00, 0x00, 0x00, 0x00])
}

/// A call end frame (kind 0x08) with `status`, `code` (empty by default) and `text`, no details.
func callEndBytes(id: UInt32, status: UInt8, code: String = "", text: String) -> [UInt8] {
    let text = Array(text.utf8)
    let code = Array(code.utf8)
    return frameBytes(
        kind: 0x08,
        id: id,
        payload: [status, UInt8(code.count)] + code + withUnsafeBytes(of: UInt16(text.count).bigEndian) { Array($0) } + text
    )
}

extension RawSocket {
    /// Reads frames (after the hello) until a call open, skipping the others; returns the open's call id, or `nil`
    /// when the peer closed first.
    func readCallOpen() async throws -> UInt32? {
        while true {
            let header = try await self.read(exactly: 5)
            guard header.count == 5 else { return nil }
            let length = header[0..<4].reduce(0) { $0 << 8 | Int($1) }
            let rest = try await self.read(exactly: length - 1)
            guard rest.count == length - 1 else { return nil }
            if header[4] == 0x06 { return rest[0..<4].reduce(0) { $0 << 8 | UInt32($1) } }
        }
    }

    /// Reads whatever arrives within `window` (a bounded wait, for tests that assert that nothing comes), or until
    /// the peer closes.
    func readAvailable(for window: Duration) async throws -> (bytes: [UInt8], closed: Bool) {
        try await onOwnThread {
            var received: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            let deadline = ContinuousClock.now.advanced(by: window)
            while true {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return (received, false) }
                let (seconds, attoseconds) = left.components
                var waiting = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
                let ready = poll(&waiting, 1, Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else { continue }
                let got = chunk.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
                if got == 0 || (got < 0 && errno == ECONNRESET) { return (received, true) }
                guard got > 0 else { throw RawSocketError.failed("read", errno) }
                received += chunk[..<got]
            }
        }
    }
}


/// A frame as a raw peer reads it: its kind, its call or request id (kinds 0x02 and up, but going-away), its payload.
struct WireFrame: CustomStringConvertible {
    var kind: UInt8
    var id: UInt32?
    var payload: [UInt8]
    var description: String { "kind \(kind) id \(id.map(String.init) ?? "-") payload \(payload.count) B" }
}

/// A call end frame's id and status.
struct CallEnd {
    var id: UInt32
    var status: UInt8

    init?(_ frame: WireFrame) {
        guard frame.kind == 0x08, let id = frame.id, let status = frame.payload.first else { return nil }
        self.id = id
        self.status = status
    }
}


/// The peer closed in the middle of a frame.
struct Truncated: Error {}

/// Splits whole frames.
func parseFrames(_ bytes: ArraySlice<UInt8>) throws -> [WireFrame] {
    var frames: [WireFrame] = []
    var rest = bytes
    while !rest.isEmpty {
        guard rest.count >= 5 else { throw Truncated() }
        let length = rest.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        guard rest.count >= 4 + length, length >= 1 else { throw Truncated() }
        let body = Array(rest.dropFirst(4).prefix(length))
        rest = rest.dropFirst(4 + length)
        let kind = body[0]
        if kind >= 0x02 && kind != 0x05 && body.count >= 5 {
            let id = body[1..<5].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            frames.append(WireFrame(kind: kind, id: id, payload: Array(body.dropFirst(5))))
        } else {
            frames.append(WireFrame(kind: kind, id: nil, payload: Array(body.dropFirst(1))))
        }
    }
    return frames
}

/// A call message frame (kind 0x07) of `json`.
func messageBytes(id: UInt32, json: String) -> [UInt8] {
    frameBytes(kind: 0x07, id: id, payload: Array(json.utf8))
}

/// A call cancel frame (kind 0x09) with `reason`.
func cancelBytes(id: UInt32, reason: UInt8) -> [UInt8] {
    frameBytes(kind: 0x09, id: id, payload: [reason])
}

/// A call credit frame (kind 0x0A) of `increment` bytes.
func creditBytes(id: UInt32, increment: UInt32) -> [UInt8] {
    frameBytes(kind: 0x0a, id: id, payload: withUnsafeBytes(of: increment.bigEndian) { Array($0) })
}

/// A ping frame (kind 0x0B).
func pingBytes(id: UInt32) -> [UInt8] {
    frameBytes(kind: 0x0b, id: id, payload: [])
}

extension RawSocket {
    /// Reads exactly `count` whole frames (on one thread).
    func readFrames(_ count: Int) async throws -> [WireFrame] {
        try await onOwnThread {
            var frames: [WireFrame] = []
            func readExactly(_ wanted: Int) throws -> [UInt8] {
                var bytes = [UInt8](repeating: 0, count: wanted)
                var offset = 0
                while offset < wanted {
                    let got = bytes[offset...].withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, wanted - offset, 0) }
                    if got == 0 { throw Truncated() }
                    guard got > 0 else { throw RawSocketError.failed("read", errno) }
                    offset += got
                }
                return bytes
            }
            while frames.count < count {
                let header = try readExactly(4)
                let length = header.reduce(0) { $0 << 8 | Int($1) }
                let body = try readExactly(length)
                frames += try parseFrames((header + body)[...])
            }
            return frames
        }
    }
}
