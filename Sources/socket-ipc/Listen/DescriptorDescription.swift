import SocketIPC

#if os(Linux)
import CSocketIPCLinux
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a file descriptor passed with a message is, as `listen` and `serve` print it: the path the kernel gives for
/// it (`/proc/self/fd/N`, Linux), its type and, for a regular file, its size (as the kernel has them cached, on Linux).
struct DescriptorDescription {
    /// The path, or what the kernel names it (`pipe:[123]`, `socket:[456]`, `/memfd:name (deleted)`); escaped for a
    /// terminal.
    var path: String
    /// The path as it is when it is UTF-8 (JSON escapes what it must itself: escaped here too, a newline would come
    /// out as `\\n`), else as ``path``.
    var jsonPath: String
    /// `file`, `directory`, `pipe`, `socket`, `character device`, `block device`, `symbolic link` or `unknown`.
    var type: String
    /// The size in bytes of a regular file.
    var size: Int?

    /// `PATH (TYPE, N bytes)`.
    var text: String {
        "\(self.path) (\(self.type)\(self.size.map { $0 == 1 ? ", 1 byte" : ", \($0) bytes" } ?? ""))"
    }

    /// The JSON object: `path`, `type`, and `size` for a file.
    var json: [String: Any] {
        var object: [String: Any] = ["path": self.jsonPath, "type": self.type]
        if let size = self.size { object["size"] = size }
        return object
    }

    /// Describes `descriptor`.
    init(_ descriptor: Int32) {
        var target = [UInt8](repeating: 0, count: 4096)
        let length = readlink("/proc/self/fd/\(descriptor)", &target, target.count)
        let raw = length > 0 ? Array(target[0..<length]) : Array("descriptor \(descriptor)".utf8)
        // One line whatever the name holds, so that a path cannot forge a line of output.
        let text = SafeText.text(raw) ?? String(decoding: raw, as: UTF8.self).debugDescription
        self.path = text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\\n")
        self.jsonPath = String(validating: raw, as: UTF8.self) ?? self.path
        // What the kernel has cached, asking the file's file system nothing: a FUSE file system served by the peer
        // may never answer a plain fstat(2), which would stop this event loop (found by a review).
        var mode: mode_t = 0
        var size = 0
        #if os(Linux)
        var type: UInt32 = 0
        var cachedSize: Int64 = 0
        guard csocketipc_cached_type_and_size(descriptor, &type, &cachedSize) == 0 else {
            self.type = "unknown"
            return
        }
        (mode, size) = (mode_t(type), Int(cachedSize))
        #else
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            self.type = "unknown"
            return
        }
        (mode, size) = (status.st_mode, Int(status.st_size))
        #endif
        switch mode & S_IFMT {
        case S_IFREG:
            self.type = "file"
            self.size = size
        case S_IFDIR: self.type = "directory"
        case S_IFIFO: self.type = "pipe"
        case S_IFSOCK: self.type = "socket"
        case S_IFCHR: self.type = "character device"
        case S_IFBLK: self.type = "block device"
        case S_IFLNK: self.type = "symbolic link"
        default: self.type = "unknown"
        }
    }

    /// Describes each of `descriptors`, then closes them as the library closes what a peer passed (a socket's
    /// `SO_LINGER` off first, so that a lingering socket does not block the event loop).
    static func describingAndClosing(_ descriptors: ReceivedDescriptors) -> [DescriptorDescription] {
        let taken = descriptors.take().map(\.rawValue)
        defer { closePassedDescriptors(taken, passedBy: descriptors.passedBy) }
        return taken.map(DescriptorDescription.init)
    }
}
