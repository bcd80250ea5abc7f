import Foundation
import SocketIPCTestSupport

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A client socket driven by hand, for tests that must behave as a silent, slow or hostile peer would.
final class RawUnixSocket: Sendable {
    let descriptor: Int32

    /// Connects to `path`; throws the `errno` of a failed `connect`.
    init(connectingTo path: String) throws {
        let descriptor = makeUnixStreamSocket()
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        guard connectUnixSocket(descriptor, to: path) == 0 else {
            let code = errno
            close(descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        self.descriptor = descriptor
    }

    deinit { close(self.descriptor) }

    /// Writes `bytes` (never raising `SIGPIPE`); returns whether all of them were written.
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        sendWithoutSignal(self.descriptor, bytes) == bytes.count
    }

    /// Reads exactly `count` bytes, or fewer if the connection ends first.
    func read(count: Int) async -> [UInt8] {
        await withCheckedContinuation { continuation in
            Thread {
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while received.count < count {
                    let wanted = min(buffer.count, count - received.count)
                    let read = buffer.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, wanted, 0) }
                    if read > 0 {
                        received += buffer[0..<read]
                    } else if read == 0 || errno != EINTR {
                        break
                    }
                }
                continuation.resume(returning: received)
            }.start()
        }
    }

    /// Reads until the peer closes the connection (or an error such as `ECONNRESET` ends it), or until `limit`
    /// passes, which is a safety net for a broken test, never a way to wait.
    /// - Returns: Every byte read, and whether the connection ended (false: the limit passed first).
    func readUntilClosed(limit: Duration = .seconds(20)) async -> (bytes: [UInt8], closed: Bool) {
        let descriptor = self.descriptor
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                var received: [UInt8] = []
                let deadline = ContinuousClock.now.advanced(by: limit)
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let left = deadline - ContinuousClock.now
                    guard left > .zero else { break }
                    var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                    let milliseconds = Int32(min(left.components.seconds * 1000 + 1, 1000))
                    if poll(&entry, 1, milliseconds) <= 0 { continue }
                    let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                    if count > 0 {
                        received += buffer[0..<count]
                    } else if count == 0 || errno != EINTR {
                        continuation.resume(returning: (received, true))
                        return
                    }
                }
                continuation.resume(returning: (received, false))
            }
            thread.start()
        }
    }
}

/// The framed protocol's hello, as PROTOCOL.md defines it: `SIPC`, version 1, flags 0, reserved 0.
let framedHello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00]
/// The hello a SocketIPC server sends: version 1 with the calls and strict-credit flags (`0x09`), which a version 1
/// peer ignores.
let serverFramedHello: [UInt8] = [0x53, 0x49, 0x50, 0x43, 0x01, 0x09, 0x00, 0x00]

/// Whether this process may run others as another user with `setpriv` (root with util-linux's `setpriv`, so on Linux
/// only: elsewhere the tests that need it are skipped).
let canRunAsAnotherUser: Bool = getuid() == 0 && toolExists("setpriv")

/// The user and group id the tests run other processes as: `nobody`'s.
let otherUserID: UInt32 = 65534

/// `setpriv` arguments that run a command as ``otherUserID``, with `groups` as its supplementary groups.
func asOtherUser(groups: [UInt32] = []) -> [String] {
    let groupOption = groups.isEmpty ? "--clear-groups" : "--groups=" + groups.map(String.init).joined(separator: ",")
    return ["--reuid=\(otherUserID)", "--regid=\(otherUserID)", groupOption]
}

