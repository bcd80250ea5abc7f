import ArgumentParser
import Foundation
import Logging
import NIOCore
import SocketIPC
import Synchronization
import UnixSignals

/// `socket-ipc demo`: both kinds of server, and client processes talking to them in every style once; then a typed
/// service and a client that survives its server's restart.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run both kinds of server with client processes, then a service whose client rides out a restart.",
        discussion: """
            Starts both servers on sockets in a fresh temporary directory, then runs client processes of this \
            binary one after the other: `send --eof`, a framed `send`, `listen --connect --count 1` (which prints the \
            server's push: a line of metadata, then the payload), and \
            `request --count 20 --concurrency 10`. Prints what each side saw (`[server ...]`, `[client ...]`) and \
            shuts the servers down gracefully.

            Then uses the demo service (the one `serve` serves) from a ServiceClient in this process (`[service \
            client]`), printing its state changes: the client starts first and waits to retry until the server is \
            up; it makes calls and watches a counter with a stream that resubscribes by itself. The server \
            restarts: it shuts down gracefully and a new one takes its place on the same path, while the client \
            waits to retry; the watch carries on from the new server and a call goes through. Last, it checks that \
            every socket file is gone.
            """
    )

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func run() async throws {
        self.output.apply()
        try await InterruptibleRun.inTemporaryDirectory(stopping: "the servers are shut down") { directory in
            try await Self.runDemo(in: directory)
        }
    }

    /// The demo, in `directory`; ends early, its servers shut down, when its task is cancelled.
    private static func runDemo(in directory: String) async throws {
        let framedPath = directory + "/framed.sock"
        let eofPath = directory + "/eof.sock"
        let servicePath = directory + "/service.sock"
        var logger = Logger(label: "socket-ipc.demo")
        logger.logLevel = .warning

        let (running, serverRunning) = AsyncStream.makeStream(of: Void.self)
        let answered = DemoHandler.Counters()
        let framed = Server.framed(
            configuration: .init(path: framedPath),
            logger: logger,
            onServerRunning: { path in
                Output.line("[server framed]  listening on \(path)")
                serverRunning.yield()
            }
        ) {
            DemoHandler(counters: answered)
        }
        let eof = Server.eof(
            configuration: .init(path: eofPath),
            logger: logger,
            onServerRunning: { path in
                Output.line("[server eof]     listening on \(path)")
                serverRunning.yield()
            },
            handler: .collecting { message, context in
                let from = context.peer.map { " from pid \($0.processID)" } ?? ""
                Output.line("[server eof]     received \(message.readableBytes) bytes\(from): \(describe(message))")
                return countAcknowledgement(message.readableBytes)
            }
        )

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await framed.run() }
            group.addTask { try await eof.run() }
            do {
                // Both servers accept connections once each has called its onServerRunning.
                var ready = 0
                for await _ in running {
                    ready += 1
                    if ready == 2 { break }
                }
                try await Self.client("client eof", ["send", "--eof", eofPath, "hello over EOF"])
                try await Self.client("client send", ["send", framedPath, "a one-way framed message"])
                try await Self.client("client push", ["listen", "--connect", "--count", "1", framedPath])
                try await Self.client(
                    "client request",
                    ["request", framedPath, "--count", "20", "--concurrency", "10", "--verbose", "ping"]
                )
                #if DEBUG
                // `swift run` builds in debug: its figures are not the library's (found by a new user's review).
                Output.line(
                    "[demo]           (a debug build, as `swift run` makes one: release figures are in BENCHMARKS.md)"
                )
                #endif
            } catch {
                framed.shutdownGracefully()
                eof.shutdownGracefully()
                try? await group.waitForAll()
                throw error
            }
            Output.line("[server framed]  answered \(answered.requests.load(ordering: .relaxed)) requests")
            Output.line("[demo]           shutting down gracefully")
            framed.shutdownGracefully()
            eof.shutdownGracefully()
            try await group.waitForAll()
        }
        try await Self.runService(at: servicePath, logger: logger)
        let left = [framedPath, eofPath, servicePath].filter { FileManager.default.fileExists(atPath: $0) }
        guard left.isEmpty else {
            Output.error("socket files left behind: \(left.joined(separator: ", "))")
            throw ExitCode.failure
        }
        Output.line("demo finished: socket files removed")
    }

    /// Runs this binary with `arguments` as a child process, waits for it to exit, and prints its output lines
    /// labelled `[label]`.
    /// - Throws: `ExitCode.failure` when the child fails.
    static func client(_ label: String, _ arguments: [String]) async throws {
        let result = try await ChildProcess.run(ChildProcess.currentExecutable, arguments)
        let prefix = "[\(label)]".padding(toLength: 17, withPad: " ", startingAt: 0)
        for line in result.output.split(separator: "\n") {
            Output.line("\(prefix)\(line)")
        }
        guard result.status == 0 else {
            // Stopped by the demo's own interruption (SIGINT): the demo says so itself.
            try Task.checkCancellation()
            let how = result.killedBySignal ? "was killed by signal \(result.status)" : "exited with status \(result.status)"
            Output.error("\(label) (socket-ipc \(arguments.joined(separator: " "))) \(how)")
            throw ExitCode.failure
        }
    }

    /// Makes a fresh directory with a short path (`/tmp/sipc-demo-XXXXXX`), so socket paths in it stay far
    /// below the `sun_path` limit.
    /// - Throws: ``SocketIPCError`` with code `systemCall` when `mkdtemp` fails.
    static func makeTemporaryDirectory() throws -> String {
        var template = Array("/tmp/sipc-demo-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SocketIPCError(
                .systemCall, "mkdtemp in /tmp failed: \(String(cString: strerror(errno))) (errno \(errno))")
        }
        return String(cString: made)
    }
}

/// The demo's framed handler: welcomes each connection with a push, prints one-way messages, answers requests.
struct DemoHandler: ConnectionHandler {
    /// What the handlers of all connections did.
    final class Counters: Sendable {
        let requests = Atomic<Int>(0)
    }

    let counters: Counters

    func connectionDidOpen(_ connection: Connection) {
        let who = connection.peer.map { "pid \($0.processID)" } ?? "a client"
        Output.line("[server framed]  connection from \(who); pushing a welcome")
        Task { try? await connection.send(ByteBuffer(string: "welcome, \(who)")) }
    }

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("[server framed]  one-way message: \(describe(message))")
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.counters.requests.add(1, ordering: .relaxed)
        reply.succeed(ByteBuffer(string: "pong for \(String(buffer: request))"))
    }
}
