import Foundation
import SystemPackage

// What the descriptor tests share: reading a descriptor, and finding what a process has open.

/// Reads `descriptor` from where it is to its end.
func readAll(_ descriptor: SystemPackage.FileDescriptor) throws -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = try chunk.withUnsafeMutableBytes { try descriptor.read(into: $0) }
        if count == 0 { break }
        bytes += chunk[..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// What `descriptor` of this process is, as `/proc/self/fd` names it: a path, or `pipe:[INODE]`.
func linkTarget(_ descriptor: SystemPackage.FileDescriptor) -> String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(descriptor.rawValue)")) ?? "?"
}

/// How many descriptors of this process are `target` (a path, or a pipe's `pipe:[INODE]`). Other tests running
/// meanwhile never open the files and pipes these tests make, so the count is exact.
func openCopies(of target: String) -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.filter {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)) == target
    }.count
}

/// ``openCopies(of:)`` once it is 0, or after 10 s: the library closes what may wait (files, Unix-domain sockets; its
/// own duplicates too) on threads of its own, a moment after the connection that held them ended.
func openCopiesOnceClosed(of target: String) async -> Int {
    let deadline = ContinuousClock.now + .seconds(10)
    while openCopies(of: target) > 0, ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(10))
    }
    return openCopies(of: target)
}
