import Foundation
import SocketIPCTestSupport

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The directory that holds the built products: the `socket-ipc` binary sits next to the test bundle, as in
/// swift-argument-parser's `ArgumentParserTestHelpers` (`debugURL`).
let productsDirectory: URL = {
    let bundleURL = Bundle(for: BundleMarker.self).bundleURL
    return bundleURL.lastPathComponent.hasSuffix("xctest") ? bundleURL.deletingLastPathComponent() : bundleURL
}()

private final class BundleMarker {}

/// The `socket-ipc` binary under test.
let socketIPCBinary = productsDirectory.appendingPathComponent("socket-ipc").path

/// A process started by a test: a ``SpawnedProcess`` (SocketIPCTestSupport), started with `posix_spawn`; its
/// standard output and standard error are read line by line as they come, and it is killed if it is still running
/// after `timeLimit` (a safety net against hanging the test run, never a way to wait for something).
/// ``SpawnedProcess/waitForExit()`` returns the exit status, or 128 + the signal that ended the process.
typealias TestProcess = SpawnedProcess

extension SpawnedProcess {
    /// Starts `executable` with `arguments`; standard input gets `input` and is then closed (`/dev/null` when `nil`).
    convenience init(
        executable: String,
        _ arguments: [String],
        input: Data? = nil,
        timeLimit: Duration = .seconds(60)
    ) throws {
        try self.init(
            executable: executable,
            arguments: arguments,
            input: input.map { .data($0) } ?? .nullDevice,
            timeLimit: timeLimit
        )
    }

    /// Starts `socket-ipc arguments...`.
    static func socketIPC(_ arguments: [String], input: Data? = nil) throws -> TestProcess {
        try TestProcess(executable: socketIPCBinary, arguments, input: input)
    }

    /// Starts `/bin/sh -c script`, with the `socket-ipc` binary as `$0` and `arguments` as `$1...`.
    static func shell(_ script: String, _ arguments: [String] = []) throws -> TestProcess {
        try TestProcess(executable: "/bin/sh", ["-c", script, socketIPCBinary] + arguments)
    }
}

/// Runs `socket-ipc arguments...` to completion.
/// - Returns: The exit status, standard output and standard error.
func runCLI(_ arguments: [String], input: String? = nil) async throws -> (status: Int32, output: String, error: String)
{
    let process = try TestProcess.socketIPC(arguments, input: input.map { Data($0.utf8) })
    let status = await process.waitForExit()
    let output = await process.standardOutput.text()
    let error = await process.standardError.text()
    return (status, output, error)
}

/// Runs `socket-ipc arguments...` to completion as ``otherUserID`` (with `setpriv`: root only).
/// - Returns: The exit status, standard output and standard error.
func runCLIAsOtherUser(_ arguments: [String]) async throws -> (status: Int32, output: String, error: String) {
    let process = try TestProcess(executable: "/usr/bin/setpriv", asOtherUser() + [socketIPCBinary] + arguments)
    let status = await process.waitForExit()
    let output = await process.standardOutput.text()
    let error = await process.standardError.text()
    return (status, output, error)
}

/// Runs `/bin/sh -c command` to completion.
/// - Returns: The exit status and the bytes written to standard output.
func runShell(_ command: String) async throws -> (status: Int32, output: [UInt8]) {
    let process = try TestProcess(executable: "/bin/sh", ["-c", command])
    let status = await process.waitForExit()
    return (status, Array(await process.standardOutput.data()))
}

/// What `lstat` tells about a file: its inode, its type and permission bits.
struct FileStatus: Equatable {
    var inode: UInt64
    var isSocket: Bool
    var permissions: UInt32
}

/// `lstat(path)`, or `nil` when there is no such file.
func fileStatus(_ path: String) -> FileStatus? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return FileStatus(
        inode: UInt64(info.st_ino),
        isSocket: (UInt32(info.st_mode) & UInt32(S_IFMT)) == UInt32(S_IFSOCK),
        permissions: UInt32(info.st_mode) & 0o7777
    )
}

/// Whether `tool` is an executable on the `PATH`.
func toolExists(_ tool: String) -> Bool {
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
    }
}

/// Whether `nc` is OpenBSD's netcat, which has `-U` (Unix domain sockets) and `-N` (shut down the socket's write
/// side at EOF on standard input).
let netcatIsOpenBSD: Bool = {
    guard toolExists("nc") else { return false }
    guard let help = try? SpawnedProcess.runSynchronously(executable: "/usr/bin/env", arguments: ["nc", "-h"]) else {
        return false
    }
    return String(decoding: help.output, as: UTF8.self).contains("OpenBSD netcat")
}()
