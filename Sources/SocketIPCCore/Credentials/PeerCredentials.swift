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

    /// Creates credentials, for tests and authorization policies.
    public init(processID: Int32, userID: UInt32, groupID: UInt32, supplementaryGroupIDs: [UInt32]? = nil) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
        self.supplementaryGroupIDs = supplementaryGroupIDs
    }

    /// `pid=… uid=… gid=…`.
    public var description: String { "pid=\(self.processID) uid=\(self.userID) gid=\(self.groupID)" }
}
