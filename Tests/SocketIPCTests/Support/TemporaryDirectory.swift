import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body` with a fresh, short temporary directory (`/tmp/sipc-XXXXXX`) and removes it afterwards.
func withTemporaryDirectory<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    var template = Array("/tmp/sipc-XXXXXX".utf8CString)
    let directory = template.withUnsafeMutableBufferPointer { buffer -> String? in
        guard let made = mkdtemp(buffer.baseAddress!) else { return nil }
        return String(cString: made)
    }
    guard let directory else { throw POSIXError(.EIO) }
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

/// The number of open file descriptors of this process.
func openFileDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// `lstat` of `path`: its inode and mode, or nil when nothing is there.
func fileIdentity(_ path: String) -> (inode: UInt64, mode: UInt32)? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return (UInt64(info.st_ino), UInt32(info.st_mode))
}
