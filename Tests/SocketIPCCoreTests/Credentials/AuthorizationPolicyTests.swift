import Testing

@testable import SocketIPCCore

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("AuthorizationPolicy")
struct AuthorizationPolicyTests {
    private static func peer(uid: UInt32, gid: UInt32 = 100, groups: [UInt32]? = nil) -> PeerCredentials {
        PeerCredentials(processID: 4242, userID: uid, groupID: gid, supplementaryGroupIDs: groups)
    }

    @Test("sameUser serves the server's own user and root, and refuses others with a reason naming uid and pid")
    func sameUser() {
        let me = geteuid()
        #expect(AuthorizationPolicy.sameUser.allows(Self.peer(uid: me)))
        #expect(AuthorizationPolicy.sameUser.allows(Self.peer(uid: 0)))
        let refusal = AuthorizationPolicy.sameUser.evaluate(Self.peer(uid: 65534))
        #expect(!refusal.isAllowed)
        #expect(refusal.reason.contains("uid 65534 (pid 4242)"), "\(refusal.reason)")
    }

    @Test("users and groups: the effective gid or a supplementary group counts")
    func usersAndGroups() {
        #expect(AuthorizationPolicy.users([1000, 1001]).allows(Self.peer(uid: 1001)))
        #expect(!AuthorizationPolicy.users([1000]).allows(Self.peer(uid: 1001)))
        let staff = AuthorizationPolicy.groups([50])
        #expect(staff.allows(Self.peer(uid: 1, gid: 50)))
        #expect(staff.allows(Self.peer(uid: 1, gid: 7, groups: [3, 50])))
        #expect(!staff.allows(Self.peer(uid: 1, gid: 7, groups: [3])))
        #expect(!staff.allows(Self.peer(uid: 1, gid: 7, groups: nil)))
        #expect(staff.needsSupplementaryGroups)
        #expect(!AuthorizationPolicy.users([1]).needsSupplementaryGroups)
    }

    @Test("policies compose with || and &&, and the reason of a refusal names the whole policy")
    func composition() {
        let either = AuthorizationPolicy.users([1000]) || .groups([50])
        #expect(either.allows(Self.peer(uid: 1000, gid: 1)))
        #expect(either.allows(Self.peer(uid: 7, gid: 50)))
        let refusal = either.evaluate(Self.peer(uid: 7, gid: 1))
        #expect(!refusal.isAllowed)
        #expect(refusal.reason.contains("(uid in [1000]) or (gid in [50])"), "\(refusal.reason)")
        #expect(either.needsSupplementaryGroups)

        let both = AuthorizationPolicy.users([1000]) && AuthorizationPolicy("not pid 1") { $0.processID != 1 }
        #expect(both.allows(Self.peer(uid: 1000)))
        #expect(!both.allows(PeerCredentials(processID: 1, userID: 1000, groupID: 0)))
        #expect(!both.allows(Self.peer(uid: 7)))
        #expect(both.evaluate(PeerCredentials(processID: 1, userID: 1000, groupID: 0)).reason.contains("not pid 1"))
    }

    @Test("a peer whose credentials are unknown is refused by every policy but anyone")
    func unknownPeer() {
        #expect(!AuthorizationPolicy.sameUser.allows(nil))
        #expect(!AuthorizationPolicy.users([0]).allows(nil))
        #expect(AuthorizationPolicy.anyone.allows(nil))
        #expect((AuthorizationPolicy.anyone || .users([1])).allows(nil))
        #expect(!(AuthorizationPolicy.anyone && .users([1])).allows(nil))
    }
}
