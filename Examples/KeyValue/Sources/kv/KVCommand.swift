import ArgumentParser
import Foundation
import KeyValueService
import SocketIPC

/// `kv --socket PATH get KEY | set KEY VALUE | watch KEY`: the key-value daemon's command-line client.
///
/// Exit status: 0 done, 1 the daemon answered with an error (`notFound`), 3 no connection (no daemon, or it went
/// away), 4 the daemon refuses this user.
@main
struct KVCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv",
        abstract: "Get, set and watch the values of a kv-daemon.",
        subcommands: [Get.self, Set.self, Watch.self]
    )

    @Option(help: "The daemon's socket file (default: kv.sock in $XDG_RUNTIME_DIR).")
    var socket: String?

    /// A get or set gives up after 10 s: a daemon that accepted the connection and answers nothing does not hold the
    /// command for ever.
    static var callOptions: CallOptions { CallOptions(timeout: .seconds(10)) }

    /// The socket file: `--socket`, or the default.
    var path: String { get throws { try KV.socketPath(self.socket) } }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the value of a key.")
        @ParentCommand var kv: KVCommand
        @Argument var key: String

        func run() async throws {
            try await reportingErrors {
                let value = try await Client.withConnection(to: try self.kv.path) { daemon in
                    try await daemon.call(KV.Get.self, self.key, options: KVCommand.callOptions)
                }
                output(value)
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set the value of a key.")
        @ParentCommand var kv: KVCommand
        @Argument var key: String
        @Argument var value: String

        func run() async throws {
            try await reportingErrors {
                _ = try await Client.withConnection(to: try self.kv.path) { daemon in
                    try await daemon.call(KV.Set.self, .init(key: self.key, value: self.value), options: KVCommand.callOptions)
                }
            }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the value of a key, then each new one, across restarts of the daemon.",
            discussion: """
                Waits for the daemon if it is not up yet. Prints `(not set)` for a key without a value, and the \
                client's connection states on standard error.
                """
        )
        @ParentCommand var kv: KVCommand
        @Argument var key: String

        func run() async throws {
            var configuration = ServiceClientConfiguration()
            // A watch waits for its daemon as long as it takes, not the 30 s a call does.
            configuration.waitForConnectionTimeout = .seconds(365 * 24 * 3600)
            // A daemon that stops answering (frozen, or silent) is given up after a ping unanswered for 10 s, and
            // the watch goes on with the next one.
            configuration.connection.connection.keepaliveInterval = .seconds(10)
            configuration.connection.connection.keepaliveTimeout = .seconds(10)
            try await reportingErrors {
                let client = ServiceClient(path: try self.kv.path, configuration: configuration)
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await client.run() }
                    group.addTask {
                        for await state in client.states { output("kv: \(state)", to: .standardError) }
                    }
                    for try await value in client.resubscribing(KV.Watch.self, self.key) {
                        output(value ?? "(not set)")
                    }
                    client.shutdown()
                }
            }
        }
    }
}

/// Runs `body`; an error a user should read is one line on standard error and the exit status it stands for.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ServiceError {
        output("error: \(error.code): \(error.message)", to: .standardError)
        throw ExitCode(1)
    } catch let error as SocketIPCError {
        output("error: \(error.message)", to: .standardError)
        throw ExitCode(error.category == .refused ? 4 : 3)
    }
}

/// Writes a line at once (standard output is not line-buffered on a pipe), so that a reader sees each change. What
/// could act on a terminal is escaped (ESC as `\u{1B}`, a newline as `\n`): a value another client stored, or a
/// daemon's error text, must not move the cursor, retitle the window or pass for a line of its own.
func output(_ line: String, to handle: FileHandle = .standardOutput) {
    var safe = ""
    for scalar in line.unicodeScalars {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .surrogate:
            safe += scalar.escaped(asASCII: true)
        default:
            safe.unicodeScalars.append(scalar)
        }
    }
    try? handle.write(contentsOf: Data((safe + "\n").utf8))
}
