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

/// What the kernel says about the process at the other end of a connection beyond its ids: its control group,
/// read without the pid-reuse race, and its security label. Linux only; written for Linux, `nil` elsewhere.
///
/// The race: a peer's pid (`SO_PEERCRED`) names the process that connected, but by the time `/proc/PID/cgroup` is
/// read that process may have exited and its pid gone to another. `SO_PEERPIDFD` (Linux 6.5) gives a pidfd of the
/// very process that connected; after reading `/proc/PID/cgroup`, `pidfd_send_signal(pidfd, 0)` succeeding shows
/// that the process was still running, so the file was its own (as polkit and systemd check a peer).
struct PeerProcessIdentity {
    /// The cgroup v2 path (`0::PATH` of `/proc/PID/cgroup`); `nil` without a pidfd or when the process has gone.
    var controlGroup: String?
    /// `SO_PEERSEC`; `nil` when no LSM labels the peer.
    var securityLabel: String?

    /// Reads both for the peer of the connected socket `descriptor`, whose process id is `processID`.
    static func of(descriptor: Int32, processID: Int32) -> PeerProcessIdentity {
        #if os(Linux)
        PeerProcessIdentity(
            controlGroup: Self.controlGroup(descriptor: descriptor, processID: processID),
            securityLabel: Self.securityLabel(descriptor: descriptor)
        )
        #else
        PeerProcessIdentity()
        #endif
    }

    #if os(Linux)
    /// `SO_PEERPIDFD`, from `<asm-generic/socket.h>`.
    static let peerPIDFDOption: Int32 = 77
    /// `SO_PEERSEC`.
    static let peerSecurityOption: Int32 = 31
    private static func controlGroup(descriptor: Int32, processID: Int32) -> String? {
        var pidfd: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, Self.peerPIDFDOption, &pidfd, &length) == 0, pidfd >= 0 else {
            return nil
        }
        defer { close(pidfd) }
        return Self.controlGroup(of: processID, pidfd: pidfd)
    }

    /// The control group of process `processID`, whose pidfd is `pidfd`, read from `/proc/PID/cgroup` (cgroup v2:
    /// its `0::PATH` line) and kept only if the process still runs after the read; `nil` otherwise.
    static func controlGroup(of processID: Int32, pidfd: Int32) -> String? {
        guard let text = ProcFile.read("/proc/\(processID)/cgroup"), Self.isRunning(pidfd) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
    }

    /// Whether the process of `pidfd` still runs, after the read: then the file was the peer's, not a later
    /// process's with its pid. `pidfd_send_signal` with signal 0 sends nothing; `EPERM` (a process this one may not
    /// signal, such as another user's when not root) still shows that it runs; only `ESRCH` says it is gone.
    static func isRunning(_ pidfd: Int32) -> Bool {
        csocketipc_pidfd_send_signal(pidfd, 0) == 0 || errno == EPERM
    }

    private static func securityLabel(descriptor: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        while true {
            var length = socklen_t(buffer.count)
            let result = buffer.withUnsafeMutableBytes {
                getsockopt(descriptor, SOL_SOCKET, Self.peerSecurityOption, $0.baseAddress, &length)
            }
            if result == 0 {
                let label = buffer.prefix(Int(length)).prefix { $0 != 0 }
                return label.isEmpty ? nil : String(decoding: label, as: UTF8.self)
            }
            // ERANGE: `length` now holds the size needed. ENOPROTOOPT: no LSM gives labels.
            guard errno == ERANGE, Int(length) > buffer.count, length <= 65536 else { return nil }
            buffer = [UInt8](repeating: 0, count: Int(length))
        }
    }

    #endif
}
