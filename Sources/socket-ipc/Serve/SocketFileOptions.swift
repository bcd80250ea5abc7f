import ArgumentParser
import SocketIPC

/// The options of `serve` and `listen` for the socket file itself.
///
/// The library has no option for the socket file's owner or group: it is created by the server's user with the
/// process's group; `--permissions` and the directory's own permissions decide who may open it.
struct SocketFileOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The socket file's permissions, in octal, whatever the umask.", valueName: "mode"))
    var permissions: String = "0600"

    @Flag(name: .long, help: "Create the socket file's parent directory (mode 0700) if it is missing.")
    var createParent = false

    func validate() throws {
        _ = try parsePermissions(self.permissions)
    }
}

extension ServerConfiguration {
    /// The configuration that a server command's options describe.
    /// - Parameters:
    ///   - path: The socket path.
    ///   - socketFile: The socket file's permissions and parent directory.
    ///   - access: Who may connect.
    ///   - limits: Limits and timeouts.
    /// - Throws: `ValidationError` for permissions that are not octal (``SocketFileOptions/validate()`` says so first).
    init(path: String, socketFile: SocketFileOptions, access: AccessOptions, limits: LimitOptions) throws {
        self.init(path: path)
        self.mode = try parsePermissions(socketFile.permissions)
        self.createParentDirectory = socketFile.createParent
        self.authorization = access.policy
        self.requiresSecureParentDirectory = !access.allowInsecureDirectory
        limits.apply(to: &self)
    }
}
