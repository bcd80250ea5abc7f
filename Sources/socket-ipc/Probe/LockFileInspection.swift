/// The lock file beside a socket (`PATH.lock`), which a SocketIPC server holds with `flock` for as long as it serves:
/// whether it exists and who holds it.
struct LockFileInspection: Sendable {
    /// The lock file's path.
    let path: String
    /// What `lstat` says about it; `nil` when there is none.
    let status: FileSummary?
    /// The processes that hold it: empty when it is free, `nil` when that cannot be told (no `/proc/locks`, or no
    /// lock file).
    let holders: [LockHolder]?

    /// Looks at the lock file at `path`.
    static func inspect(_ path: String) -> LockFileInspection {
        guard case .success(let status) = FileSummary.of(path) else {
            return LockFileInspection(path: path, status: nil, holders: nil)
        }
        return LockFileInspection(path: path, status: status, holders: LockHolder.holders(of: status))
    }

    /// Whether some process holds the lock: `false` when the file is missing or free, `nil` when unknown.
    var isHeld: Bool? {
        guard self.status != nil else { return false }
        return self.holders.map { !$0.isEmpty }
    }

    /// The first holder, if any.
    var holder: LockHolder? { self.holders?.first }

    /// `held by process 1234 (socket-ipc)`, `free`, `missing` or `held or free (no /proc/locks to tell)`.
    var stateDescription: String {
        guard self.status != nil else { return "missing" }
        guard let holders = self.holders else { return "unknown whether held (no /proc/locks to tell)" }
        guard !holders.isEmpty else { return "free" }
        return "held by process " + holders.map(\.description).joined(separator: ", ")
    }
}
