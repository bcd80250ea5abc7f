import ArgumentParser
import Foundation
import Logging
import SocketIPC
import SocketIPCBenchmarkWorkloads

/// `socket-ipc bench`: the shared benchmark's workloads, server and client in this process.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run the standard workloads (W1-W5) in-process and print a table, or JSON lines.",
        discussion: """
            The same workloads as Benchmarks/socketipc with shared/bench/run.sh, but server and client share this \
            process (so the figures are not comparable with run.sh's two-process ones). idle-mem needs a separate \
            server process: use run.sh for it. Prints a table, one row per workload, as each finishes (the \
            workload running is shown on a terminal); with --json, one JSON line per workload in run.sh's format \
            instead.

            Examples:

              socket-ipc bench --quick
              socket-ipc bench --workload rr stream --json | jq .ops_per_s
            """
    )

    @Option(name: .long, parsing: .upToNextOption, help: "Workloads: seed rr stream bulk fanin (default: all).")
    var workload: [String] = []

    @Flag(name: .long, help: "Smaller n, as run.sh --quick.")
    var quick = false

    @Option(name: .customLong("n"), help: "Operations per workload, instead of the workload's default (or --quick's).")
    var operations: Int?

    @Option(name: .long, help: "Microseconds of busy polling after every read and write (the latency mode); 0, the default, keeps the library's adaptive polling.")
    var busyPollUs: Int = 0

    @Flag(name: .long, help: "Turn busy polling off (the library polls adaptively by default).")
    var noBusyPoll = false

    @Flag(name: .long, help: "Print one JSON line per workload (shared/bench's format) instead of a table.")
    var json = false

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        if let operations = self.operations, operations < 1 { throw ValidationError("--n must be at least 1") }
        guard self.busyPollUs >= 0 else { throw ValidationError("--busy-poll-us must be 0 or more microseconds") }
        if self.noBusyPoll && self.busyPollUs > 0 {
            throw ValidationError("--no-busy-poll and --busy-poll-us exclude each other")
        }
        for name in self.workload {
            guard let workload = Workload(rawValue: name), workload != .idleMemory else {
                throw ValidationError("unknown or unsupported workload \(name); use seed, rr, stream, bulk or fanin")
            }
        }
    }

    func run() async throws {
        self.output.apply()
        let names = self.workload.isEmpty ? ["seed", "rr", "stream", "bulk", "fanin"] : self.workload
        var workloads: [Workload] = []
        for name in names {
            guard let workload = Workload(rawValue: name), workload != .idleMemory else {
                throw ValidationError("unknown or unsupported workload \(name); use seed, rr, stream, bulk or fanin")
            }
            workloads.append(workload)
        }
        let chosen = workloads
        let quick = self.quick, operations = self.operations, json = self.json
        let noBusyPoll = self.noBusyPoll, busyPollUs = self.busyPollUs
        try await InterruptibleRun.inTemporaryDirectory(stopping: "the benchmark servers are shut down") { directory in
            try await Self.run(
                chosen, in: directory, quick: quick, operations: operations, json: json, noBusyPoll: noBusyPoll,
                busyPollUs: busyPollUs)
        }
    }

    /// Runs `workloads` one after another, each server on a socket in `directory`, and prints their rows.
    private static func run(
        _ workloads: [Workload],
        in directory: String,
        quick: Bool,
        operations: Int?,
        json: Bool,
        noBusyPoll: Bool,
        busyPollUs: Int
    ) async throws {
        var logger = Logger(label: "socket-ipc.bench")
        logger.logLevel = .error
        let busyPoll: BusyPolling =
            noBusyPoll ? .off : busyPollUs > 0 ? .fixed(.microseconds(busyPollUs)) : .adaptive()
        let table = BenchmarkTable()
        if !json { Output.line(table.header) }
        for workload in workloads {
            let path = directory + "/\(workload.rawValue).sock"
            let (running, continuation) = AsyncStream.makeStream(of: Void.self)
            let server = BenchmarkServer.make(path: path, workload: workload, busyPoll: busyPoll, logger: logger) { _ in
                continuation.yield()
            }
            var (n, conns, size) = workload.defaults
            if quick { n = Self.quickN[workload] ?? n }
            if let operations = operations { n = operations }
            let options = BenchmarkOptions(socket: path, workload: workload, n: n, conns: conns, size: size, busyPoll: busyPoll)
            let progress = ProgressBar(total: nil, label: "running \(workload.rawValue) (n=\(n), conns=\(conns), size=\(size))")
            progress.show()
            defer { progress.finish() }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.run() }
                for await _ in running { break }
                do {
                    if let report = try await BenchmarkClient.run(options) {
                        progress.finish()
                        Output.line(json ? "\(report)" : table.row(report))
                    }
                } catch {
                    server.shutdownGracefully()
                    throw error
                }
                server.shutdownGracefully()
                try await group.waitForAll()
            }
        }
    }

    static let quickN: [Workload: Int] = [.seed: 10_000, .rr: 50_000, .stream: 500_000, .bulk: 512, .fanin: 500]
}
