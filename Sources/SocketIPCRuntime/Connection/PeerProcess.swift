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

/// The process at the other end of a connection, held by a pidfd taken when it connected (`SO_PEERPIDFD`, Linux 6.5
/// and later): whatever happens to its pid later, this names that very process, so a handler can ask whether it still
/// runs, read its control group (hence its systemd unit) or signal it without the pid-reuse race.
///
/// A connection has one when ``ConnectionOptions/holdsPeerProcess`` is set and the kernel gives a pidfd
/// (``Connection/peerProcess``); it costs one more descriptor per connection, closed when the last reference to this
/// object goes. Linux only.
public final class PeerProcess: Sendable, CustomStringConvertible {
    /// The pidfd; closed on deinit.
    private let pidfd: Int32
    /// The process id the peer had when it connected (`SO_PEERCRED`).
    public let processID: Int32

    /// Takes a pidfd of the peer of the connected socket `descriptor`; `nil` where the kernel gives none.
    static func take(descriptor: Int32, processID: Int32) -> PeerProcess? {
        #if os(Linux)
        var pidfd: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(descriptor, SOL_SOCKET, PeerProcessIdentity.peerPIDFDOption, &pidfd, &length) == 0,
            pidfd >= 0
        else { return nil }
        return PeerProcess(pidfd: pidfd, processID: processID)
        #else
        return nil
        #endif
    }

    private init(pidfd: Int32, processID: Int32) {
        self.pidfd = pidfd
        self.processID = processID
    }

    deinit {
        close(self.pidfd)
    }

    /// Whether the process still runs (`pidfd_send_signal` with signal 0: `ESRCH` means it has exited; `EPERM`, a
    /// process this one may not signal, still runs).
    public var isRunning: Bool {
        #if os(Linux)
        PeerProcessIdentity.isRunning(self.pidfd)
        #else
        false
        #endif
    }

    /// The process's control group (its cgroup v2 path) now, as `PeerCredentials.controlGroup` gives it at connect;
    /// `nil` when the process has exited (then `/proc/PID` may already be another process's, and is not read as its).
    public func controlGroup() -> String? {
        #if os(Linux)
        PeerProcessIdentity.controlGroup(of: self.processID, pidfd: self.pidfd)
        #else
        return nil
        #endif
    }

    /// Sends `signal` to the process, never to another that reuses its pid (`pidfd_send_signal(2)`).
    /// - Throws: `SocketIPCError` with code `systemCall` (`ESRCH`: it has exited; `EPERM`: not allowed).
    public func signal(_ signal: Int32) throws {
        #if os(Linux)
        guard csocketipc_pidfd_send_signal(self.pidfd, signal) == 0 else {
            throw SocketIPCError.systemCall("pidfd_send_signal", errno: errno)
        }
        #else
        throw SocketIPCError.systemCall("pidfd_send_signal", errno: ENOSYS)
        #endif
    }

    /// `pid=P (pidfd)`.
    public var description: String { "pid=\(self.processID) (pidfd)" }
}
