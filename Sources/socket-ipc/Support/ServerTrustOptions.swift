import ArgumentParser
import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `--trust-uid UID`: the users a client command also trusts to run the server where another user could have taken
/// its address first (an `@name`, or a path such as a socket in `/tmp`), as `ClientConfiguration.trustedServerUserIDs`.
struct ServerTrustOptions: ParsableArguments {
    @Option(
        name: .customLong("trust-uid"),
        help: ArgumentHelp(
            "Also trust a server run by this user id at an @name or at a path another user could have made, such as "
                + "a socket in /tmp (repeatable; by default only this user and root).",
            valueName: "uid"
        )
    )
    var userIDs: [UInt32] = []

    /// The users trusted: this process's own, root and those given; `nil` when none was given (the default).
    var trustedServerUserIDs: Set<UInt32>? {
        self.userIDs.isEmpty ? nil : Set(self.userIDs).union([UInt32(geteuid()), 0])
    }
}
