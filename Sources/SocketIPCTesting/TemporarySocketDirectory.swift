#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body` with a new, private temporary directory whose path is short enough for socket files, and removes the
/// directory and everything in it afterwards, also when `body` throws.
///
/// The directory is made with `mkdtemp(3)` as `/tmp/sipc-XXXXXX` (mode 0700, owned by the caller), so a socket path
/// in it has about 90 bytes left under the `sun_path` limit (`SocketPath.maximumLength`: 107 bytes on Linux, 103
/// on Darwin). `/tmp` is used rather than `$TMPDIR`, which is long on Darwin.
///
/// ```swift
/// try await withTemporarySocketDirectory { directory in
///     let path = directory + "/app.sock"
///     // ... run a server on `path` ...
/// }
/// ```
/// - Parameters:
///   - isolation: The actor `body` runs on; the caller's by default.
///   - body: Uses the directory, given as an absolute path without a trailing `/`.
/// - Returns: What `body` returns.
/// - Throws: `SocketIPCError` with code `systemCall` when the directory cannot be made; what `body` throws.
@discardableResult
public func withTemporarySocketDirectory<Value>(
    isolation: isolated (any Actor)? = #isolation,
    _ body: (_ directory: String) async throws -> Value
) async throws -> Value {
    let directory = try makeTemporarySocketDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

/// Makes `/tmp/sipc-XXXXXX` with `mkdtemp(3)`; returns its path.
private func makeTemporarySocketDirectory() throws -> String {
    let template = "/tmp/sipc-XXXXXX"
    var buffer = Array(template.utf8CString)
    let made = buffer.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
    guard made else {
        let code = errno
        throw SocketIPCError(
            .systemCall,
            "mkdtemp(\(template)) failed: \(String(cString: strerror(code))) (errno \(code))",
            path: template
        )
    }
    return String(decoding: buffer.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
