import ArgumentParser
import Foundation
import Logging
import NIOCore
import SocketIPC

/// `socket-ipc demo`: servers and client processes talking, every style once.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a framed and an EOF-style server with client processes talking to them, then shut down.",
        discussion: """
            Starts both servers on sockets in a fresh temporary directory; runs client processes of this binary \
            that send an EOF-style message, a framed one-way message, wait for a server push, and make 20 \
            requests 10 at a time; prints what each side saw; shuts down gracefully and checks that the socket \
            files are gone.
            """
    )

    func run() async throws {
        let directory = try Self.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let framedPath = directory + "/framed.sock"
        let eofPath = directory + "/eof.sock"
        var logger = Logger(label: "socket-ipc.demo")
        logger.logLevel = .warning

        let (running, runningContinuation) = AsyncStream.makeStream(of: Void.self)
        let framed = Server.framed(
            configuration: .init(path: framedPath),
            logger: logger,
            onServerRunning: { Output.line("[server framed] listening on \($0)"); runningContinuation.yield() }
        ) { DemoHandler() }
        let eof = Server.eof(
            configuration: .init(path: eofPath),
            logger: logger,
            onServerRunning: { Output.line("[server eof]    listening on \($0)"); runningContinuation.yield() },
            handler: .collecting { message, context in
                let who = context.peer.map { " from pid \($0.processID)" } ?? ""
                Output.line("[server eof]    received \(message.readableBytes) bytes\(who): \(describe(message))")
                var acknowledgement = ByteBuffer()
                acknowledgement.writeInteger(UInt32(message.readableBytes))
                return acknowledgement
            }
        )

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await framed.run() }
            group.addTask { try await eof.run() }
            var ready = 0
            for await _ in running {
                ready += 1
                if ready == 2 { break }
            }
            do {
                try await Self.client("client eof", ["send", "--socket", eofPath, "--eof", "hello over EOF"])
                try await Self.client("client send", ["send", "--socket", framedPath, "a one-way framed message"])
                try await Self.client("client push", ["listen-for-push", "--socket", framedPath])
                try await Self.client(
                    "client request",
                    ["request", "--socket", framedPath, "--count", "20", "--concurrency", "10", "ping"]
                )
            } catch {
                framed.shutdownGracefully()
                eof.shutdownGracefully()
                throw error
            }
            Output.line("[demo] shutting down")
            framed.shutdownGracefully()
            eof.shutdownGracefully()
            try await group.waitForAll()
        }
        let left = [framedPath, eofPath].filter { FileManager.default.fileExists(atPath: $0) }
        guard left.isEmpty else {
            Output.error("socket files left behind: \(left.joined(separator: ", "))")
            throw ExitCode.failure
        }
        Output.line("demo finished: socket files removed")
    }

    /// Runs this binary with `arguments` as a child process and prints its output lines labelled with `label`.
    static func client(_ label: String, _ arguments: [String]) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executablePath())
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let exited = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { exited.continuation.yield($0.terminationStatus) }
        try process.run()
        let data = await Task.detached { output.fileHandleForReading.readDataToEndOfFile() }.value
        var statuses = exited.stream.makeAsyncIterator()
        let status = await statuses.next() ?? -1
        let padded = "[\(label)]".padding(toLength: 17, withPad: " ", startingAt: 0)
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            Output.line("\(padded)\(line)")
        }
        guard status == 0 else {
            Output.error("\(label) (\(arguments.joined(separator: " "))) exited with status \(status)")
            throw ExitCode.failure
        }
    }

    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    static func makeTemporaryDirectory() throws -> String {
        var template = Array("/tmp/socket-ipc-demo-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SocketIPCError(.systemCall, "could not create a temporary directory in /tmp")
        }
        return String(cString: made)
    }
}

/// The demo's framed handler: welcomes each connection with a push, prints messages, answers requests.
struct DemoHandler: ConnectionHandler {
    func connectionDidOpen(_ connection: Connection) {
        let who = connection.peer.map { "pid \($0.processID)" } ?? "a client"
        Output.line("[server framed] connection from \(who); pushing a welcome")
        Task { try? await connection.send(ByteBuffer(string: "welcome, \(who)")) }
    }

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("[server framed] one-way message: \(describe(message))")
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let text = String(buffer: request)
        reply.complete {
            // Later requests may finish first: replies carry ids, so order does not matter.
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...20)))
            return ByteBuffer(string: "pong for \(text)")
        }
    }
}
