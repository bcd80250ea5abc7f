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

/// The number of open file descriptors of this process (`/proc/self/fd` on Linux, `/dev/fd` elsewhere), or -1.
func openFileDescriptorCount() -> Int {
    #if os(Linux)
    let directory = "/proc/self/fd"
    #else
    let directory = "/dev/fd"
    #endif
    return (try? FileManager.default.contentsOfDirectory(atPath: directory).count) ?? -1
}

/// `lstat` of `path`: inode, full mode (type and permissions) and owner; `nil` when nothing is there.
func fileStatus(_ path: String) -> (inode: UInt64, mode: mode_t, uid: uid_t)? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return (UInt64(info.st_ino), info.st_mode, info.st_uid)
}

/// Makes a directory with exactly `mode`, whatever the umask.
func makeDirectory(_ path: String, mode: mode_t) throws {
    guard mkdir(path, 0o700) == 0, chmod(path, mode) == 0 else { throw POSIXError(.EIO) }
}

/// The names in `directory`, sorted.
func directoryEntries(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
}

/// Whether a blocking `connect` to `path` succeeds right now.
func connects(to path: String) -> Bool {
    let descriptor = makeUnixStreamSocket()
    defer { close(descriptor) }
    return connectUnixSocket(descriptor, to: path) == 0
}

/// Binds a socket at `path` and closes it without removing the file, as a killed server leaves it; returns the
/// descriptor instead when `listening`.
@discardableResult
func makeStaleSocket(at path: String, listening: Bool = false) throws -> Int32 {
    let descriptor = makeUnixStreamSocket()
    let bound = withSocketAddress(path) { bind(descriptor, $0, $1) }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    if listening {
        listen(descriptor, 8)
        return descriptor
    }
    close(descriptor)
    return -1
}

/// Whether the process's hard limit of open files (`RLIMIT_NOFILE`), which a server may raise its soft limit to, is
/// at least `count`: tests whose servers hold many descriptors per connection need it.
func openFileHardLimitAtLeast(_ count: UInt64) -> Bool {
    var limit = rlimit()
    #if canImport(Glibc)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE  // Untested: Darwin and Musl.
    #endif
    guard getrlimit(resource, &limit) == 0 else { return false }
    return UInt64(limit.rlim_max) >= count
}
