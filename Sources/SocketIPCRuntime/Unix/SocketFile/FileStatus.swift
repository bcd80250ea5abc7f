#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What `stat` says about one file, in the few fields the socket file's owner decides by.
struct FileStatus {
    /// The device and inode: which file this is, whatever its name.
    struct Identity: Equatable {
        let device: UInt64
        let inode: UInt64
    }

    let identity: Identity
    /// The file type bits (`st_mode & S_IFMT`).
    let type: mode_t
    /// The permission bits, with set-user-ID, set-group-ID and sticky (`st_mode & 0o7777`).
    let permissions: mode_t
    /// The owner's user id.
    let owner: uid_t
    /// How many names (hard links) the file has.
    let linkCount: UInt64

    init(_ info: stat) {
        self.identity = Identity(
            device: UInt64(truncatingIfNeeded: info.st_dev),
            inode: UInt64(truncatingIfNeeded: info.st_ino)
        )
        self.type = info.st_mode & S_IFMT
        self.permissions = info.st_mode & 0o7777
        self.owner = info.st_uid
        self.linkCount = UInt64(truncatingIfNeeded: info.st_nlink)
    }

    var isDirectory: Bool { self.type == S_IFDIR }
    var isSocket: Bool { self.type == S_IFSOCK }
    var isRegularFile: Bool { self.type == S_IFREG }
    var isSymbolicLink: Bool { self.type == S_IFLNK }

    /// Whether someone other than the owner may create, rename or remove entries: group- or other-writable
    /// without the sticky bit (with it, only an entry's owner may remove or rename that entry).
    var othersMayReplaceEntries: Bool {
        (self.permissions & 0o022) != 0 && (self.permissions & S_ISVTX) == 0
    }

    /// `ls`-style octal permissions, such as `0755` or `1777`.
    var octalPermissions: String {
        let digits = String(self.permissions, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// A few words for an error message: "a directory", "a symbolic link"...
    var kindDescription: String {
        switch self.type {
        case S_IFDIR: "a directory"
        case S_IFLNK: "a symbolic link"
        case S_IFREG: "a regular file"
        case S_IFSOCK: "a socket"
        case S_IFIFO: "a FIFO (named pipe)"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        default: "a special file"
        }
    }

    /// `fstatat(directory, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never what a symbolic link points to.
    /// - Returns: The status, or `nil` when nothing is there (`ENOENT`).
    /// - Throws: ``SocketIPCError`` (`systemCall`) on any other failure.
    static func entry(_ name: String, in directory: Int32, describedAs path: String) throws -> FileStatus? {
        var info = stat()
        while fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) != 0 {
            let code = errno
            if code == EINTR { continue }
            if code == ENOENT { return nil }
            throw SocketIPCError.systemCall("fstatat", errno: code, path: path)
        }
        return FileStatus(info)
    }

    /// `fstat(descriptor)`.
    /// - Throws: ``SocketIPCError`` (`systemCall`).
    static func of(descriptor: Int32, describedAs path: String) throws -> FileStatus {
        var info = stat()
        while fstat(descriptor, &info) != 0 {
            let code = errno
            if code == EINTR { continue }
            throw SocketIPCError.systemCall("fstat", errno: code, path: path)
        }
        return FileStatus(info)
    }

    /// `stat(path)`, following symbolic links; `nil` on any failure.
    static func following(_ path: String) -> FileStatus? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileStatus(info)
    }
}
