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

/// A call end frame (kind 0x08) with `status` and `text`, no code or details.
func callEndBytes(id: UInt32, status: UInt8, text: String) -> [UInt8] {
    let text = Array(text.utf8)
    return frameBytes(kind: 0x08, id: id, payload: [status, 0x00] + withUnsafeBytes(of: UInt16(text.count).bigEndian) { Array($0) } + text)
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
