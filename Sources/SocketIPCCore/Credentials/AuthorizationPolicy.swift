#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Decides, from a peer's ``PeerCredentials``, whether a server serves it, and says why not.
///
/// The server asks its policy once per connection, on the connection's first moment, before it reads a byte: a
/// refused framed peer gets the server's hello and a going-away frame with reason `unauthorized` (its calls fail
/// with ``SocketIPCError/Code/unauthorized``); a refused EOF-style peer is closed without anything being read. Each
/// refusal is logged at `notice` as a refusal, with the peer's uid and pid and the policy's reason.
///
/// Policies compose like booleans, as D-Bus's `<allow user=… group=…>` rules do:
///
/// ```swift
/// configuration.authorization = .sameUser || .groups([adminGroupID])
/// configuration.authorization = .users([1000, 1001]) && AuthorizationPolicy("not pid 1") { $0.processID != 1 }
/// ```
///
/// The default of `ServerConfiguration.authorization` is ``sameUser``: the file mode is the first line of
/// defence (a socket file that others may open is easy to make by mistake, with a umask or `--permissions 0666`),
/// and this policy the second.
public struct AuthorizationPolicy: Sendable, CustomStringConvertible {
    /// A policy's answer for one peer.
    public struct Decision: Sendable, Hashable, CustomStringConvertible {
        /// Whether the peer is served.
        public var isAllowed: Bool
        /// Why, for a person reading the server's log: for a refusal, what the peer would need to be served.
        public var reason: String

        /// Creates a decision.
        public init(isAllowed: Bool, reason: String) {
            self.isAllowed = isAllowed
            self.reason = reason
        }

        /// `allowed: REASON` or `refused: REASON`.
        public var description: String { "\(self.isAllowed ? "allowed" : "refused"): \(self.reason)" }
    }

    private let evaluateKnown: @Sendable (PeerCredentials) -> Decision
    /// Whether a peer whose credentials are unknown is served.
    private let admitsUnknownPeers: Bool
    /// What the policy admits, in words: `same user (uid 1000) or root`, `uid in [1000, 1001]`, `anyone`.
    public let description: String
    /// Whether the policy looks at supplementary groups, which the server then reads for each peer
    /// (`SO_PEERGROUPS`, one more system call per connection).
    package let needsSupplementaryGroups: Bool
    /// Whether the policy looks at the peer's control group or security label (``PeerCredentials/controlGroup``,
    /// ``PeerCredentials/securityLabel``), which the server then reads for each connection.
    package let needsProcessIdentity: Bool

    private init(
        description: String,
        needsSupplementaryGroups: Bool,
        needsProcessIdentity: Bool = false,
        admitsUnknownPeers: Bool = false,
        admitsEveryone: Bool? = nil,
        evaluate: @escaping @Sendable (PeerCredentials) -> Decision
    ) {
        self.description = description
        self.needsSupplementaryGroups = needsSupplementaryGroups
        self.needsProcessIdentity = needsProcessIdentity
        self.admitsEveryone = admitsEveryone ?? admitsUnknownPeers
        self.admitsUnknownPeers = admitsUnknownPeers
        self.evaluateKnown = evaluate
    }

    /// A policy that asks `decide`.
    /// - Parameters:
    ///   - description: What the policy admits, in words, for the log line of a refusal; default `custom policy`.
    ///   - decide: Returns whether to serve a peer with these credentials.
    public init(_ description: String = "custom policy", _ decide: @escaping @Sendable (PeerCredentials) -> Bool) {
        self.init(description: description, needsSupplementaryGroups: false) { peer in
            decide(peer)
                ? Decision(isAllowed: true, reason: description)
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) does not satisfy \(description)")
        }
    }

    /// Decides whether to serve `peer`. A peer whose credentials the platform cannot tell (`nil`) is refused by
    /// every policy but ``anyone``.
    /// - Parameter peer: The peer's credentials, as the server reads them from the kernel (with the supplementary
    ///   groups when the policy looks at groups).
    /// - Returns: The decision, with its reason.
    public func evaluate(_ peer: PeerCredentials?) -> Decision {
        guard let peer else {
            return self.admitsUnknownPeers
                ? Decision(isAllowed: true, reason: self.description)
                : Decision(isAllowed: false, reason: "the peer's credentials are unknown; \(self.description) needs them")
        }
        return self.evaluateKnown(peer)
    }

    /// Whether the policy serves every process (it is, or includes with `||`, ``anyone``): a server on an abstract
    /// address refuses to start with such a policy unless told explicitly. A custom policy is taken not to.
    package let admitsEveryone: Bool

    /// Whether `peer` is served; the same as `evaluate(peer).isAllowed`.
    public func allows(_ peer: PeerCredentials?) -> Bool { self.evaluate(peer).isAllowed }

    // MARK: - Policies

    /// Serves every process that can open the socket file, whoever runs it: the file mode is then the only
    /// access control. (The containerd lesson, CVE-2020-15257: say so explicitly when you mean it.)
    public static let anyone = AuthorizationPolicy(
        description: "anyone",
        needsSupplementaryGroups: false,
        admitsUnknownPeers: true
    ) { _ in
        Decision(isAllowed: true, reason: "anyone")
    }

    /// The same as ``anyone``.
    public static let allowAll = anyone

    /// Serves processes running as the server's own effective user id, and root (uid 0, which can open any socket
    /// file anyway). The default policy.
    public static var sameUser: AuthorizationPolicy {
        let me = geteuid()
        let description = me == 0 ? "root (uid 0)" : "same user (uid \(me)) or root"
        return AuthorizationPolicy(description: description, needsSupplementaryGroups: false) { peer in
            peer.userID == me || peer.userID == 0
                ? Decision(isAllowed: true, reason: description)
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) is not \(description)")
        }
    }

    /// Serves processes running as one of `userIDs` (effective uid).
    public static func users(_ userIDs: Set<UInt32>) -> AuthorizationPolicy {
        let description = "uid in \(userIDs.sorted())"
        return AuthorizationPolicy(description: description, needsSupplementaryGroups: false) { peer in
            userIDs.contains(peer.userID)
                ? Decision(isAllowed: true, reason: description)
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) is not in \(description)")
        }
    }

    /// Serves processes whose effective group id or one of whose supplementary groups (`SO_PEERGROUPS`, Linux 4.13
    /// and later; on other systems only the effective group counts) is one of `groupIDs`.
    public static func groups(_ groupIDs: Set<UInt32>) -> AuthorizationPolicy {
        let description = "gid in \(groupIDs.sorted())"
        return AuthorizationPolicy(description: description, needsSupplementaryGroups: true) { peer in
            let member = groupIDs.contains(peer.groupID)
                || (peer.supplementaryGroupIDs ?? []).contains(where: groupIDs.contains)
            return member
                ? Decision(isAllowed: true, reason: description)
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) (gid \(peer.groupID)) is not in \(description)")
        }
    }

    /// Serves processes that run in one of the systemd system units `units` (such as `app-cli.service`), by the
    /// peer's control group read without the pid-reuse race (``PeerCredentials/systemdUnit``, as `sd_pid_get_unit(3)`
    /// reads it; Linux 6.5 and later: a peer whose unit cannot be read is refused). A user's own processes are in
    /// `user@UID.service`, never in a system unit of their choosing, so a user cannot pass for `app-cli.service` by
    /// naming a unit of theirs so.
    public static func systemdUnits(_ units: Set<String>) -> AuthorizationPolicy {
        let description = "systemd unit in \(units.sorted())"
        return AuthorizationPolicy(description: description, needsSupplementaryGroups: false, needsProcessIdentity: true) {
            peer in
            guard let unit = peer.systemdUnit else {
                let why = peer.controlGroup == nil ? "its control group is unknown" : "it runs in no systemd unit"
                return Decision(isAllowed: false, reason: "\(peer.userAndProcess): \(why), so not \(description)")
            }
            return units.contains(unit)
                ? Decision(isAllowed: true, reason: "systemd unit \(unit)")
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) runs in \(unit), not \(description)")
        }
    }

    /// Serves processes whose control group is `prefix` or lies under it (`/system.slice/app.service` serves that
    /// service and its sub-groups), read without the pid-reuse race (``PeerCredentials/controlGroup``). `/` serves
    /// every process whose control group can be read, and counts as a policy that admits everyone.
    public static func controlGroup(under prefix: String) -> AuthorizationPolicy {
        let base = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        let description = "control group under \(prefix)"
        // Under `/` (or ``) is every process: such a policy counts as admitting everyone.
        return AuthorizationPolicy(
            description: description,
            needsSupplementaryGroups: false,
            needsProcessIdentity: true,
            admitsEveryone: base.isEmpty
        ) { peer in
            guard let group = peer.controlGroup else {
                return Decision(isAllowed: false, reason: "\(peer.userAndProcess): its control group is unknown")
            }
            let inside = base.isEmpty || group == base || group.hasPrefix(base + "/")
            return inside
                ? Decision(isAllowed: true, reason: "control group \(group)")
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) is in \(group), not \(description)")
        }
    }

    /// Serves processes whose security label (``PeerCredentials/securityLabel``, `SO_PEERSEC`) is one of `labels`.
    public static func securityLabels(_ labels: Set<String>) -> AuthorizationPolicy {
        let description = "security label in \(labels.sorted())"
        return AuthorizationPolicy(description: description, needsSupplementaryGroups: false, needsProcessIdentity: true) {
            peer in
            guard let label = peer.securityLabel else {
                return Decision(isAllowed: false, reason: "\(peer.userAndProcess) has no security label")
            }
            return labels.contains(label)
                ? Decision(isAllowed: true, reason: "security label \(label)")
                : Decision(isAllowed: false, reason: "\(peer.userAndProcess) has label \(label), not \(description)")
        }
    }

    /// Serves a peer that either policy serves.
    public static func || (left: AuthorizationPolicy, right: AuthorizationPolicy) -> AuthorizationPolicy {
        let description = "(\(left.description)) or (\(right.description))"
        return AuthorizationPolicy(
            description: description,
            needsSupplementaryGroups: left.needsSupplementaryGroups || right.needsSupplementaryGroups,
            needsProcessIdentity: left.needsProcessIdentity || right.needsProcessIdentity,
            admitsUnknownPeers: left.admitsUnknownPeers || right.admitsUnknownPeers,
            admitsEveryone: left.admitsEveryone || right.admitsEveryone
        ) { peer in
            let first = left.evaluate(peer)
            if first.isAllowed { return first }
            let second = right.evaluate(peer)
            if second.isAllowed { return second }
            return Decision(isAllowed: false, reason: "\(peer.userAndProcess) is not \(description)")
        }
    }

    /// Serves a peer that both policies serve.
    public static func && (left: AuthorizationPolicy, right: AuthorizationPolicy) -> AuthorizationPolicy {
        AuthorizationPolicy(
            description: "(\(left.description)) and (\(right.description))",
            needsSupplementaryGroups: left.needsSupplementaryGroups || right.needsSupplementaryGroups,
            needsProcessIdentity: left.needsProcessIdentity || right.needsProcessIdentity,
            admitsUnknownPeers: left.admitsUnknownPeers && right.admitsUnknownPeers,
            admitsEveryone: left.admitsEveryone && right.admitsEveryone
        ) { peer in
            let first = left.evaluate(peer)
            return first.isAllowed ? right.evaluate(peer) : first
        }
    }
}

extension PeerCredentials {
    /// `uid U (pid P)`, for the reasons of refusals.
    fileprivate var userAndProcess: String { "uid \(self.userID) (pid \(self.processID))" }
}
