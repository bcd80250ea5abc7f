#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Decides, from a peer's ``PeerCredentials``, whether a server serves it. A refused framed peer gets a
/// going-away frame with reason `unauthorized` (its calls fail with ``SocketIPCError/Code/unauthorized``); a
/// refused EOF-style peer is closed without an acknowledgement.
public struct AuthorizationPolicy: Sendable {
    private let decide: @Sendable (PeerCredentials?) -> Bool

    /// A policy that asks `decide`; the credentials are `nil` where the platform cannot tell them.
    public init(_ decide: @escaping @Sendable (PeerCredentials?) -> Bool) {
        self.decide = decide
    }

    /// Serves every peer that can open the socket file.
    public static let allowAll = AuthorizationPolicy { _ in true }

    /// Serves only processes running as the same user as the server.
    public static var sameUser: AuthorizationPolicy {
        let me = getuid()
        return AuthorizationPolicy { $0?.userID == me }
    }

    /// Serves only processes running as one of `userIDs`.
    public static func users(_ userIDs: Set<UInt32>) -> AuthorizationPolicy {
        AuthorizationPolicy { peer in peer.map { userIDs.contains($0.userID) } ?? false }
    }

    func allows(_ peer: PeerCredentials?) -> Bool { self.decide(peer) }
}
