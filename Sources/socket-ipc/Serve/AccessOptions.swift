import ArgumentParser
import SocketIPC

/// The options of `serve` and `listen` that say who may connect.
struct AccessOptions: ParsableArguments {
    @Option(
        name: .customLong("allow-uid"),
        parsing: .singleValue,
        help: ArgumentHelp(
            "Also serve processes of this user id (repeatable). By default only the server's own user and root are served.",
            valueName: "uid"
        )
    )
    var userIDs: [UInt32] = []

    @Option(
        name: .customLong("allow-gid"),
        parsing: .singleValue,
        help: ArgumentHelp(
            "Also serve processes whose primary or supplementary group is this group id (repeatable).",
            valueName: "gid"
        )
    )
    var groupIDs: [UInt32] = []

    @Flag(
        name: .customLong("allow-anyone"),
        help: "Serve every process that can open the socket file: the file mode is then the only access control."
    )
    var anyone = false

    @Flag(
        name: .customLong("allow-insecure-directory"),
        help: "Serve from a directory that other users could write to (no sticky bit) or that another user owns."
    )
    var allowInsecureDirectory = false

    /// The policy these options describe: the server's own user and root, plus the users and groups named.
    var policy: AuthorizationPolicy {
        if self.anyone { return .anyone }
        var policy = AuthorizationPolicy.sameUser
        if !self.userIDs.isEmpty { policy = policy || .users(Set(self.userIDs)) }
        if !self.groupIDs.isEmpty { policy = policy || .groups(Set(self.groupIDs)) }
        return policy
    }

    func validate() throws {
        if self.anyone && !(self.userIDs.isEmpty && self.groupIDs.isEmpty) {
            throw ValidationError("--allow-anyone already serves every user; drop --allow-uid and --allow-gid")
        }
        // (uid_t)-1 and (gid_t)-1 name nobody: chown(2) and setreuid(2) read them as "leave unchanged".
        if self.userIDs.contains(.max) || self.groupIDs.contains(.max) {
            throw ValidationError("4294967295 is (uid_t)-1, which names no user or group; give a real uid or gid")
        }
    }
}
