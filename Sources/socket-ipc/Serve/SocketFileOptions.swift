import ArgumentParser
import SocketIPC

/// The options of `serve` and `listen` for the socket file itself.
///
/// The library has no option for the socket file's owner or group: it is created by the server's user with the
/// process's group; `--permissions` and the directory's own permissions decide who may open it.
struct SocketFileOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The socket file's permissions, in octal, whatever the umask (default 0600). Not for an @name address or "
                + "an inherited socket, which have no file of ours.",
            valueName: "mode"
        )
    )
    var permissions: String?

    @Flag(name: .long, help: "Create the socket file's parent directory (mode 0700) if it is missing.")
    var createParent = false

    func validate() throws {
        if let permissions = self.permissions { _ = try parsePermissions(permissions) }
    }
}

extension ServerConfiguration {
    /// The configuration that a server command's options describe.
    ///
    /// On an abstract address (`@name`) or an inherited socket there is no socket file of ours: `--permissions` and
    /// `--create-parent` are then usage errors, and `--allow-anyone` on an abstract address is taken as the explicit
    /// consent the library asks for (``ServerConfiguration/allowsAnyoneOnAbstractAddress``).
    /// - Parameters:
    ///   - path: The socket path, or `@name`.
    ///   - inheritedSocket: A listening socket inherited by socket activation, served instead of `path`.
    ///   - socketFile: The socket file's permissions and parent directory.
    ///   - access: Who may connect.
    ///   - limits: Limits and timeouts.
    /// - Throws: `ValidationError` for permissions that are not octal (``SocketFileOptions/validate()`` says so first),
    ///   or for file options where there is no file.
    init(
        path: String,
        inheritedSocket: InheritedSocket? = nil,
        socketFile: SocketFileOptions,
        access: AccessOptions,
        limits: LimitOptions
    ) throws {
        if let inheritedSocket {
            self.init(inheritedSocket: inheritedSocket)
        } else {
            self.init(path: path)
        }
        let noFile =
            inheritedSocket != nil ? "the socket was inherited (socket activation): its file is the service manager's"
            : path.hasPrefix("@") ? "\(path) is an abstract address: it has no file" : nil
        if let noFile, socketFile.permissions != nil || socketFile.createParent {
            throw UsageError(message: "\(noFile); drop --permissions and --create-parent")
        }
        if let permissions = socketFile.permissions { self.mode = try parsePermissions(permissions) }
        self.createParentDirectory = socketFile.createParent
        self.authorization = access.policy
        self.allowsAnyoneOnAbstractAddress = access.anyone
        self.requiresSecureParentDirectory = !access.allowInsecureDirectory
        limits.apply(to: &self)
    }
}
