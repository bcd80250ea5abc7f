#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How many more threads the process may start, and the connections with descriptor passing that they can hold.
///
/// Each connection to a server with descriptor passing on has a relay of two threads (``DescriptorRelay``). A server
/// whose connection limits need more threads than its process may start fails `pthread_create` with `EAGAIN` for
/// everyone once one user has opened enough connections, and then everything else of the process that starts a
/// thread or a process fails too (a `--exec` command, SwiftNIO's blocking pool): the per-user limit would protect
/// nobody. So, as with descriptors (``DescriptorLimit``), the server serves fewer connections where the limit is too
/// low: all but a reserve of threads for the process's own, and at most half of them for one user.
///
/// The limits read (Linux; elsewhere none is known): the control group's `pids.max` less its `pids.current`, for
/// its own group and each one above it (cgroup v2, or v1's `pids` hierarchy: systemd's `TasksMax=`, a container's
/// `--pids-limit`), and `RLIMIT_NPROC` (`ulimit -u`, `LimitNPROC=`) less the process's own threads, for a user other
/// than root (the kernel does not apply it to root). `RLIMIT_NPROC` counts every process and thread of the real user
/// id, so the user's other processes may take some of what is counted here.
package struct ThreadLimit: Equatable {
    /// Threads the process may still start; `nil` when no limit is known.
    package let available: Int?

    /// A limit of `available` threads more; `nil` for none known.
    package init(available: Int?) { self.available = available }

    /// Threads kept for the process's own use: an eighth of ``available``, between 64 and 256.
    package var reserve: Int { Self.reserve(self.available ?? 0) }

    /// An eighth of `threads`, between 64 and 256: event loops, SwiftNIO's blocking pool, the library's closing and
    /// accepting threads, and the application's own threads and child processes (each counts as a task in
    /// `pids.current`).
    package static func reserve(_ threads: Int) -> Int { min(256, max(64, threads / 8)) }

    /// The most connections whose relays (two threads each) fit beside the reserve, at least 1; `nil` without a
    /// known limit.
    package var relayedConnections: Int? {
        self.available.map { max(1, ($0 - self.reserve) / 2) }
    }

    /// The limit of this process now.
    package static func current() -> ThreadLimit {
        #if os(Linux)
        let controlGroups = ProcFile.read("/proc/self/cgroup").map(Self.pidsControlGroups) ?? []
        let fromGroups = controlGroups.compactMap { Self.available(inControlGroup: $0, read: { ProcFile.read($0) }) }.min()
        let fromUser = Self.availableUnderUserLimit()
        let known = [fromGroups, fromUser].compactMap { $0 }
        return ThreadLimit(available: known.min())
        #else
        return ThreadLimit(available: nil)
        #endif
    }

    /// The directories of the `pids` controller of the control group that `/proc/self/cgroup` names: cgroup v2's
    /// `0::PATH` under `/sys/fs/cgroup`, and v1's `N:pids:PATH` (or `N:…,pids,…:PATH`) under `/sys/fs/cgroup/pids`.
    package static func pidsControlGroups(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { return nil }
            if fields[0] == "0", fields[1].isEmpty { return "/sys/fs/cgroup" + Self.trimmed(fields[2]) }
            guard fields[1].split(separator: ",").contains("pids") else { return nil }
            return "/sys/fs/cgroup/pids" + Self.trimmed(fields[2])
        }
    }

    /// `path` without a trailing `/` (the root group is `/`).
    private static func trimmed(_ path: Substring) -> String {
        path.hasSuffix("/") ? String(path.dropLast()) : String(path)
    }

    /// The tasks the group at `directory` and every group above it up to the hierarchy's root may still start: the
    /// least of their `pids.max - pids.current`; `nil` when none of them has a limit (`max`, or no such files: a
    /// host's root group has none).
    /// - Parameter read: Reads a file's text; `nil` when it cannot be read.
    package static func available(inControlGroup directory: String, read: (String) -> String?) -> Int? {
        let root = directory.hasPrefix("/sys/fs/cgroup/pids") ? "/sys/fs/cgroup/pids" : "/sys/fs/cgroup"
        var least: Int?
        var current = directory
        while current.hasPrefix(root) {
            if let maximum = read(current + "/pids.max").flatMap(Self.number),
                let used = read(current + "/pids.current").flatMap(Self.number)
            {
                least = min(least ?? .max, max(0, maximum - used))
            }
            // The hierarchy's root too: in a container with a control group namespace, `/proc/self/cgroup` says `/`
            // and the container's own limit is there (on a host, the root group has no such files).
            guard current.count > root.count, let slash = current.lastIndex(of: "/") else { break }
            current = String(current[..<slash])
        }
        return least
    }

    /// `text` without the spaces, tabs and line ends at either end.
    private static func stripped(_ text: Substring) -> String {
        let blank: Set<Character> = [" ", "\t", "\n"]
        let start = text.firstIndex { !blank.contains($0) } ?? text.endIndex
        let end = text.lastIndex { !blank.contains($0) }.map { text.index(after: $0) } ?? start
        return String(text[start..<max(start, end)])
    }

    /// The number a control file holds (`max` is none).
    private static func number(_ text: String) -> Int? {
        Int(Self.stripped(text[...]))
    }

    #if os(Linux)
    /// `RLIMIT_NPROC`'s soft limit less this process's threads, for a real user id other than root's; `nil` when
    /// unlimited or for root.
    private static func availableUnderUserLimit() -> Int? {
        guard getuid() != 0 else { return nil }
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_NPROC.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else {
            return nil
        }
        let threads =
            ProcFile.read("/proc/self/status")?
            .split(separator: "\n")
            .first { $0.hasPrefix("Threads:") }
            .flatMap { Int(Self.stripped($0.dropFirst("Threads:".count))) } ?? 1
        return max(0, Int(clamping: limit.rlim_cur) - threads)
    }
    #endif
}
