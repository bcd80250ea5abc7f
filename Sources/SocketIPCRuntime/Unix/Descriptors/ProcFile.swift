#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads the small text files of `/proc`, which have no size (`stat` says 0): with `read(2)` until end-of-file,
/// retrying on `EINTR`, so that a signal during a read never makes the answer "unknown".
package enum ProcFile {
    /// The whole of the file at `path`, or `nil` when it cannot be opened or read, or holds more than `limit` bytes.
    /// - Parameter limit: The most bytes accepted; default 1 MiB.
    package static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { return nil }
        defer { close(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while bytes.count <= limit {
            let count = chunk.withUnsafeMutableBytes { systemRead(file, $0.baseAddress, $0.count) }
            if count > 0 {
                bytes += chunk[..<count]
            } else if count == 0 {
                return String(decoding: bytes, as: UTF8.self)
            } else if errno != EINTR {
                return nil
            }
        }
        return nil
    }
}
