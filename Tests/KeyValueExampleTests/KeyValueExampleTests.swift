import Foundation
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

/// Examples/KeyValue as a user runs it: the built `kv-daemon` and `kv`, as processes, on a socket in a temporary
/// directory.
@Suite("Examples/KeyValue: kv-daemon and kv", .timeLimit(.minutes(5)), .limitedConcurrency)
struct KeyValueExampleTests {
    /// Starts `kv-daemon --socket path options...` and waits until it prints `listening on PATH`.
    func startDaemon(at path: String, _ options: [String] = []) async throws -> ExampleProcess {
        let daemon = try ExampleProcess("kv-daemon", ["--socket", path] + options)
        guard await daemon.standardOutput.waitForLine("listening on \(path)") else {
            await daemon.stop()
            Issue.record("kv-daemon did not start: \(await daemon.standardError.text())")
            throw CancellationError()
        }
        return daemon
    }

    /// Runs `body` with a daemon on `kv.sock` in a new temporary directory, then stops it.
    func withDaemon(_ options: [String] = [], _ body: (_ path: String) async throws -> Void) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            try await withProcess(try await self.startDaemon(at: path, options)) { _ in try await body(path) }
        }
    }

    @Test("kv set, then kv get prints the value")
    func setThenGet() async throws {
        try await self.withDaemon { path in
            let set = try await runKV(["--socket", path, "set", "colour", "red"])
            #expect(set.status == 0, "stderr: \(set.error)")
            #expect(set.output == "")
            let get = try await runKV(["--socket", path, "get", "colour"])
            #expect(get.status == 0, "stderr: \(get.error)")
            #expect(get.output == "red\n")
        }
    }

    @Test("kv get prints a value another client stored with what could act on a terminal escaped")
    func valuesEscaped() async throws {
        try await withDaemon { path in
            let hostile = "\u{1B}]0;PWNED\u{07}\nforged line"
            let set = try await runKV(["--socket", path, "set", "title", hostile])
            #expect(set.status == 0, "stderr: \(set.error)")
            let get = try await runKV(["--socket", path, "get", "title"])
            #expect(get.status == 0, "stderr: \(get.error)")
            #expect(get.output == #"\u{1B}]0;PWNED\u{07}\nforged line"# + "\n")
        }
    }

    @Test("kv get of a key without a value exits 1 with the daemon's notFound on standard error")
    func notFound() async throws {
        try await self.withDaemon { path in
            let get = try await runKV(["--socket", path, "get", "missing"])
            #expect(get.status == 1)
            #expect(get.output == "")
            #expect(get.error == "error: notFound: no value for key 'missing'\n")
        }
    }

    @Test("kv get without a daemon exits 3")
    func noDaemon() async throws {
        try await withTemporarySocketDirectory { directory in
            let get = try await runKV(["--socket", directory + "/kv.sock", "get", "colour"])
            #expect(get.status == 3)
            #expect(get.error.hasPrefix("error: "), "stderr: \(get.error)")
        }
    }

    @Test("a daemon that admits only another uid refuses kv, which exits 4")
    func refused() async throws {
        try await self.withDaemon(["--allow-uid", "\(getuid() + 1)"]) { path in
            let get = try await runKV(["--socket", path, "get", "colour"])
            #expect(get.status == 4, "stderr: \(get.error)")
            #expect(get.error.contains("authorization policy refused"), "stderr: \(get.error)")
        }
    }

    @Test("kv watch, started before the daemon, prints the value once it is up, each new one, and after a restart")
    func watchAcrossRestart() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let watcher = try ExampleProcess("kv", ["--socket", path, "watch", "colour"])
            try await withProcess(watcher) { watcher in
                // The watcher waits: nothing listens yet.
                #expect(await watcher.standardError.waitForLine(containing: "waiting to retry") != nil)

                let first = try await self.startDaemon(at: path)
                try await withProcess(first) { first in
                    #expect(await watcher.standardOutput.waitForLine("(not set)"))
                    let red = try await runKV(["--socket", path, "set", "colour", "red"])
                    #expect(red.status == 0, "stderr: \(red.error)")
                    #expect(await watcher.standardOutput.waitForLine("red"))

                    first.signal(SIGTERM)
                    #expect(await first.waitForExit() == 0)
                }

                // A new daemon on the same path (its store empty); the same watcher resubscribes.
                let second = try await self.startDaemon(at: path)
                try await withProcess(second) { _ in
                    let blue = try await runKV(["--socket", path, "set", "colour", "blue"])
                    #expect(blue.status == 0, "stderr: \(blue.error)")
                    #expect(await watcher.standardOutput.waitForLine("blue"))
                }
                #expect(watcher.isRunning)
            }
        }
    }
}
