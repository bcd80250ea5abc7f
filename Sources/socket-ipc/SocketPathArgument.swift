import ArgumentParser
import SocketIPC

/// How every command explains its PATH argument (`--socket PATH`, the spelling of earlier versions, is accepted too:
/// ``SocketIPCCommand/movingSocketOption(in:)``).
let socketArgumentHelp = ArgumentHelp(
    "The socket: a path (anything with a '/', such as ./app.sock or /run/app.sock), or a bare name for a socket in "
        + "the runtime directory ($XDG_RUNTIME_DIR, else a private /tmp/socketipc-UID made with mode 0700). "
        + "@name is an address in Linux's abstract namespace (no file). --socket PATH is accepted too.",
    valueName: "path"
)

/// Turns a command's PATH argument into a socket path.
///
/// A bare name (no `/`, such as `app.sock`) names a socket in this user's runtime directory,
/// `$XDG_RUNTIME_DIR/app.sock` or `/tmp/socketipc-UID/app.sock` (see ``RuntimeDirectory``); anything with a `/`
/// (`./app.sock`, `/run/app.sock`) is a path, used as given. When `$XDG_RUNTIME_DIR` is set but cannot be used, a note
/// on standard error says why and which directory is used instead.
///
/// - Parameters:
///   - argument: The PATH argument.
///   - creatingDirectory: Whether to create a missing fallback runtime directory (mode `0700`): `true` for `serve`,
///     `false` for clients, which only look.
/// - Returns: The path, for ``ServerConfiguration/path`` or a client's `to:`.
/// - Throws: ``SocketIPCError``: `invalidPath` for `.`, `..` or a path too long for `sun_path`; `insecureDirectory`
///   when the fallback runtime directory exists but another user could use it; `systemCall`.
func socketPath(fromArgument argument: String, creatingDirectory: Bool) throws -> String {
    // A path, or `@name`: an address in Linux's abstract namespace.
    guard !argument.contains("/"), !argument.hasPrefix("@") else { return argument }
    let directory = try RuntimeDirectory.current(create: creatingDirectory)
    // A variable that is set but unusable (not owned by this user, open to others, not absolute) is said once, as
    // the fallback otherwise hides a misconfigured session; one that is unset is the usual case and says nothing.
    if directory.source == .fallback, let reason = directory.fallbackReason, reason.hasPrefix("XDG_RUNTIME_DIR=") {
        Output.note("note: \(SafeText.oneLine(reason)); using \(SafeText.oneLine(directory.path))")
    }
    return try directory.socketPath(argument).path
}
