import SocketIPCCore
import Testing

/// Issue 13, section 5: the systemd unit is read from the control group as `sd_pid_get_unit(3)` reads it, and the
/// policies on the control group, the unit and the security label decide by them (a peer whose identity is unknown is
/// refused).
@Suite("Policies on the peer process's identity")
struct ProcessIdentityPolicyTests {
    static func peer(controlGroup: String? = nil, label: String? = nil) -> PeerCredentials {
        PeerCredentials(processID: 42, userID: 1000, groupID: 1000, controlGroup: controlGroup, securityLabel: label)
    }

    @Test(
        "the systemd unit is the first service or scope below the slices, as sd_pid_get_unit reads it",
        arguments: [
            ("/system.slice/app.service", "app.service"),
            // A user's own unit is chosen by that user: the system unit is their user manager.
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-cli.service", "user@1000.service"),
            ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
            ("/system.slice/app.service/worker", "app.service"),
            ("/", nil), ("/machine.slice", nil),
        ] as [(String, String?)]
    )
    func systemdUnit(controlGroup: String, unit: String?) {
        #expect(Self.peer(controlGroup: controlGroup).systemdUnit == unit)
    }

    @Test("the user unit is the first service or scope below user@UID.service, as sd_pid_get_user_unit reads it")
    func systemdUserUnit() {
        let user = Self.peer(controlGroup: "/user.slice/user-1000.slice/user@1000.service/app.slice/app-cli.service")
        #expect(user.systemdUserUnit == "app-cli.service")
        #expect(Self.peer(controlGroup: "/system.slice/app.service").systemdUserUnit == nil)
        #expect(Self.peer(controlGroup: "/user.slice/user-1000.slice/user@1000.service").systemdUserUnit == nil)
    }

    @Test("a user cannot pass for a system unit by naming a unit of their own like it")
    func userUnitIsNotSystemUnit() {
        let policy = AuthorizationPolicy.systemdUnits(["app-cli.service"])
        let impostor = Self.peer(controlGroup: "/user.slice/user-1000.slice/user@1000.service/app.slice/app-cli.service")
        #expect(!policy.allows(impostor))
    }

    @Test("controlGroup(under: \"/\") counts as admitting everyone; a narrower one does not")
    func rootControlGroupAdmitsEveryone() {
        #expect(AuthorizationPolicy.controlGroup(under: "/").admitsEveryone)
        #expect(AuthorizationPolicy.controlGroup(under: "").admitsEveryone)
        #expect(!AuthorizationPolicy.controlGroup(under: "/system.slice").admitsEveryone)
        #expect((AuthorizationPolicy.sameUser || .controlGroup(under: "/")).admitsEveryone)
        #expect(!(AuthorizationPolicy.sameUser && .controlGroup(under: "/")).admitsEveryone)
    }

    @Test("systemdUnits serves a peer in one of the units; refuses another unit, none, or an unknown control group")
    func systemdUnits() {
        let policy = AuthorizationPolicy.systemdUnits(["app-cli.service"])
        #expect(policy.allows(Self.peer(controlGroup: "/system.slice/app-cli.service")))
        let other = policy.evaluate(Self.peer(controlGroup: "/system.slice/sshd.service"))
        #expect(!other.isAllowed)
        #expect(other.reason.contains("runs in sshd.service"))
        #expect(!policy.allows(Self.peer(controlGroup: "/")))
        let unknown = policy.evaluate(Self.peer())
        #expect(!unknown.isAllowed)
        #expect(unknown.reason.contains("control group is unknown"))
        #expect(!policy.allows(nil))
    }

    @Test("controlGroup(under:) serves the group and its sub-groups, not a sibling that shares a prefix")
    func controlGroupUnder() {
        let policy = AuthorizationPolicy.controlGroup(under: "/system.slice/app.service")
        #expect(policy.allows(Self.peer(controlGroup: "/system.slice/app.service")))
        #expect(policy.allows(Self.peer(controlGroup: "/system.slice/app.service/worker")))
        #expect(!policy.allows(Self.peer(controlGroup: "/system.slice/app.service2")))
        #expect(!policy.allows(Self.peer()))
        #expect(AuthorizationPolicy.controlGroup(under: "/").allows(Self.peer(controlGroup: "/anything")))
    }

    @Test("securityLabels serves the labels given, and refuses a peer without one")
    func securityLabels() {
        let policy = AuthorizationPolicy.securityLabels(["system_u:system_r:app_t:s0"])
        #expect(policy.allows(Self.peer(label: "system_u:system_r:app_t:s0")))
        #expect(!policy.allows(Self.peer(label: "unconfined")))
        #expect(!policy.allows(Self.peer()))
    }
}
