import Foundation
import SocketIPCRuntime

/// A process that holds a lock on a file, as `/proc/locks` tells it.
///
/// A SocketIPC server holds an exclusive `flock` on `PATH.lock` for as long as it serves on `PATH` (the kernel drops
/// it when the process dies). `flock` locks are invisible to `fcntl(F_GETLK)` and `F_OFD_GETLK` on Linux, so the
/// holder is looked up in `/proc/locks`, which lists every lock with its holder's pid and the file's device and inode:
///
/// ```
/// 2: FLOCK  ADVISORY  WRITE 22162 fe:00:16225447 0 EOF
/// ```
///
/// Lines with `->` are processes waiting for a lock, not holding it, and are skipped. On Darwin (untested) there is no
/// `/proc/locks` and the holder is unknown.
struct LockHolder: Sendable, Equatable {
    /// The holder's process id, as `/proc/locks` gives it (the process that took the lock).
    let pid: Int32
    /// Its command name from `/proc/PID/comm`, when readable, as the process set it (``ProcessName/unescaped(_:)``):
    /// print it with ``description``, which escapes it.
    let command: String?

    /// `1234 (socket-ipc)`, the name escaped for a terminal (``SafeText/oneLine(_:)``).
    var description: String {
        self.command.map { "\(self.pid) (\(SafeText.oneLine($0)))" } ?? "\(self.pid)"
    }

    /// The processes that hold a lock on the file with `status`.
    /// - Returns: The holders (empty when the file is not locked), or `nil` when `/proc/locks` cannot be read.
    static func holders(of status: FileSummary) -> [LockHolder]? {
        // Read to the end: FileManager's `contents(atPath:)` stops after one read of a /proc file (about 4 KiB), and a
        // busy machine's list of locks is longer.
        guard let text = ProcFile.read("/proc/locks", limit: 64 << 20) else { return nil }
        return Self.holders(in: text, device: status.device, inode: status.inode)
            .map { LockHolder(pid: $0, command: ProcessName.unescaped($0)) }
    }

    /// The pids that `/proc/locks`' `text` lists as holding a lock on the file at `device` and `inode`.
    static func holders(in text: String, device: UInt64, inode: UInt64) -> [Int32] {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        var pids: [Int32] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            // "N:" TYPE ADVISORY|MANDATORY READ|WRITE PID MAJOR:MINOR:INODE START END; waiters have "->" after "N:".
            guard fields.count >= 6, fields[1] != "->" else { continue }
            let file = fields[5].split(separator: ":")
            guard file.count == 3, UInt64(file[0], radix: 16) == major, UInt64(file[1], radix: 16) == minor,
                UInt64(file[2]) == inode, let pid = Int32(fields[4]), pid > 0, !pids.contains(pid)
            else { continue }
            pids.append(pid)
        }
        return pids
    }
}
