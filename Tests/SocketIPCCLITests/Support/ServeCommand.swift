import SocketIPCTestSupport
import SocketIPCTesting
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts `socket-ipc serve --socket path options...`, waits until it prints `listening on PATH` (which it does once
/// the socket accepts connections), runs `body` with the process, then stops it (SIGKILL if it is still running) and
/// waits for it, also when `body` throws.
/// - Parameters:
///   - path: The socket path.
///   - options: More arguments of `serve`, such as `["--mode", "eof"]`.
///   - shellSetup: A shell command that runs before `serve` is exec'd in the same shell, such as `umask 077` or
///     `ulimit -n 256`; `nil` runs `serve` directly.
///   - body: Uses the running server.
/// - Returns: What `body` returns.
func withServeCommand<Result>(
    at path: String,
    _ options: [String] = [],
    shellSetup: String? = nil,
    _ body: (_ server: TestProcess) async throws -> Result
) async throws -> Result {
    let arguments = ["serve", "--socket", path] + options
    let server =
        try shellSetup.map { try TestProcess.shell("\($0); exec \"$0\" \"$@\"", arguments) }
        ?? TestProcess.socketIPC(arguments)
    return try await withProcess(server) { server in
        let listening = await server.standardOutput.waitForLine(containing: "listening on")
        try #require(listening == "listening on \(path)", "serve did not start listening on \(path)")
        return try await body(server)
    }
}

/// ``withServeCommand(at:_:shellSetup:_:)`` on `s.sock` in a new temporary directory, which is removed afterwards.
/// - Parameters:
///   - options: More arguments of `serve`.
///   - directoryMode: The mode to give the directory first, such as 0o755 for a socket that other users must reach;
///     `nil` keeps mkdtemp's 0700.
///   - shellSetup: A shell command that runs before `serve` in the same shell.
///   - body: Uses the socket path and the running server.
/// - Returns: What `body` returns.
func withServeCommand<Result>(
    _ options: [String] = [],
    directoryMode: mode_t? = nil,
    shellSetup: String? = nil,
    _ body: (_ path: String, _ server: TestProcess) async throws -> Result
) async throws -> Result {
    try await withTemporarySocketDirectory { directory in
        if let directoryMode { chmod(directory, directoryMode) }
        let path = directory + "/s.sock"
        return try await withServeCommand(at: path, options, shellSetup: shellSetup) { try await body(path, $0) }
    }
}
