// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What `lstat` or `stat` says about one file, in the fields `socket-ipc probe` reports: its kind, owner, group and
/// permission bits, and its device and inode (which identify a lock file in `/proc/locks`).
struct FileSummary: Sendable {
    /// The file type, named as the `--json` form of `probe` names it.
    enum Kind: String, Sendable {
        /// A Unix domain socket (`S_IFSOCK`).
        case socket
        /// A regular file (`S_IFREG`).
        case file
        /// A directory (`S_IFDIR`).
        case directory
        /// A symbolic link (`S_IFLNK`), seen only by `lstat`.
        case symlink
        /// A FIFO, or named pipe (`S_IFIFO`).
        case fifo
        /// A character device (`S_IFCHR`).
        case characterDevice
        /// A block device (`S_IFBLK`).
        case blockDevice
        /// Any other type.
        case other

        /// A few words for a sentence: "a socket", "a regular file", "a symbolic link"...
        var description: String {
            switch self {
            case .socket: "a socket"
            case .file: "a regular file"
            case .directory: "a directory"
            case .symlink: "a symbolic link"
            case .fifo: "a FIFO (named pipe)"
            case .characterDevice: "a character device"
            case .blockDevice: "a block device"
            case .other: "a special file"
            }
        }
    }

    /// The file type.
    let kind: Kind
    /// The owner's user id.
    let uid: UInt32
    /// The group id.
    let gid: UInt32
    /// The permission bits, with set-user-ID, set-group-ID and sticky (`st_mode & 0o7777`).
    let permissions: UInt32
    /// The device the file is on (`st_dev`).
    let device: UInt64
    /// The inode number (`st_ino`).
    let inode: UInt64

    /// The summary of what `stat` or `lstat` filled in.
    init(_ info: stat) {
        let mode = UInt32(info.st_mode)
        self.kind =
            switch mode & UInt32(S_IFMT) {
            case UInt32(S_IFSOCK): .socket
            case UInt32(S_IFREG): .file
            case UInt32(S_IFDIR): .directory
            case UInt32(S_IFLNK): .symlink
            case UInt32(S_IFIFO): .fifo
            case UInt32(S_IFCHR): .characterDevice
            case UInt32(S_IFBLK): .blockDevice
            default: .other
            }
        self.uid = UInt32(info.st_uid)
        self.gid = UInt32(info.st_gid)
        self.permissions = mode & 0o7777
        self.device = UInt64(truncatingIfNeeded: info.st_dev)
        self.inode = UInt64(truncatingIfNeeded: info.st_ino)
    }

    /// `lstat(path)` (the entry itself, never what a symbolic link points to), or `stat(path)` when
    /// `followingLinks`.
    /// - Returns: The summary, or the `errno` of the failure (`ENOENT`: nothing there).
    static func of(_ path: String, followingLinks: Bool = false) -> Result<FileSummary, SystemErrno> {
        var info = stat()
        while (followingLinks ? stat(path, &info) : lstat(path, &info)) != 0 {
            let code = errno
            if code == EINTR { continue }
            return .failure(SystemErrno(code))
        }
        return .success(FileSummary(info))
    }

    /// `ls`-style octal permissions, such as `0755` or `1777`.
    var mode: String {
        let digits = String(self.permissions, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// The owner's name, if an account has this uid.
    var user: String? { AccountNames.userName(self.uid) }

    /// The group's name, if a group has this gid.
    var group: String? { AccountNames.groupName(self.gid) }

    /// `owner alice (uid 1000), group staff (gid 50), mode 0600`.
    var ownershipDescription: String {
        "owner \(AccountNames.describeUser(self.uid)), group \(AccountNames.describeGroup(self.gid)), mode \(self.mode)"
    }
}
