/// Who is on the other end of a connection, as the kernel reports it (`SO_PEERCRED` on Linux; `getpeereid`,
/// `LOCAL_PEERCRED` and `LOCAL_PEERPID` on Darwin): the process id, user id and group id of the peer when it
/// connected (or, for the client, when the server called `listen`).
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    /// The peer's process id.
    public let processID: Int32
    /// The peer's effective user id.
    public let userID: UInt32
    /// The peer's effective group id.
    public let groupID: UInt32
    /// The peer's supplementary group ids (`SO_PEERGROUPS`, Linux 4.13 and later), where read: a server reads them
    /// only when its ``AuthorizationPolicy`` looks at groups; `nil` otherwise and where the platform cannot tell.
    public let supplementaryGroupIDs: [UInt32]?
    /// The peer process's control group (its cgroup v2 path, such as `/system.slice/app.service`), read when it
    /// connected without the pid-reuse race: through a pidfd of the peer (`SO_PEERPIDFD`, Linux 6.5 and later), the
    /// process is shown to be still running after its `/proc/PID/cgroup` was read, so the file was its own. A server
    /// reads it only when its ``AuthorizationPolicy`` looks at it; `nil` otherwise, on older kernels and elsewhere.
    public let controlGroup: String?
    /// The peer's security label (`SO_PEERSEC`: its SELinux context or AppArmor profile, as the LSM tells it), read
    /// with ``controlGroup``; `nil` when no LSM gives one.
    public let securityLabel: String?

    /// Creates credentials, for tests and authorization policies.
    public init(
        processID: Int32,
        userID: UInt32,
        groupID: UInt32,
        supplementaryGroupIDs: [UInt32]? = nil,
        controlGroup: String? = nil,
        securityLabel: String? = nil
    ) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
        self.supplementaryGroupIDs = supplementaryGroupIDs
        self.controlGroup = controlGroup
        self.securityLabel = securityLabel
    }

    /// The systemd system unit the peer runs in, from ``controlGroup``, as `sd_pid_get_unit(3)` reads it: the first
    /// component below the slices that names a service or a scope (`/system.slice/app.service/worker` gives
    /// `app.service`). A user's own processes, run by their user manager, are in `user@UID.service`
    /// (`/user.slice/user-1000.slice/user@1000.service/app.slice/app.service` gives `user@1000.service`): a user can
    /// name their own units as they like, so only a system unit says which program runs. `nil` without one.
    public var systemdUnit: String? {
        self.units.first
    }

    /// The unit of the peer's user manager it runs in, as `sd_pid_get_user_unit(3)` reads it: the first service or
    /// scope below `user@UID.service` (`app.service` in the example of ``systemdUnit``); `nil` for a process not run
    /// by a user manager. Chosen by that user: trust it only together with the user's id.
    public var systemdUserUnit: String? {
        let units = self.units
        guard let manager = units.first, manager.hasPrefix("user@"), units.count > 1 else { return nil }
        return units[1]
    }

    /// The services and scopes of ``controlGroup``, outermost first, skipping the slices between them.
    private var units: [String] {
        guard let controlGroup = self.controlGroup else { return [] }
        return controlGroup.split(separator: "/").filter { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }
            .map(String.init)
    }

    /// `pid=… uid=… gid=…`.
    public var description: String { "pid=\(self.processID) uid=\(self.userID) gid=\(self.groupID)" }
}
