// The SocketIPC peer of the shared UDS benchmark (shared/bench/README.md):
//   socketipc-bench server --socket PATH --workload W                          serves until SIGTERM
//   socketipc-bench client --socket PATH --workload W --n N --conns C --size S  prints one JSON line
// Both take --busy-poll-us N to turn on SocketIPC's latency mode (ConnectionOptions.busyPolling .fixed), and
// --busy-poll off to turn polling off; the default is the library's (adaptive). --max-descriptors N turns descriptor
// passing on (ConnectionOptions.maximumDescriptorsPerMessage), which relays every connection's bytes: what that costs;
// with it, payloads of --shared-payload-threshold bytes or more travel in shared memory (default the library's).
// --zero-copy on (with --max-descriptors) makes the client send one-way messages as SharedMemoryLoans it fills in
// place, and the server take shared payloads as MappedPayloads, without copying them.
import Logging
import ServiceLifecycle
import UnixSignals
import SocketIPC
import SocketIPCBenchmarkWorkloads

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func fail(_ message: String) -> Never {
    let line = "error: \(message)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(2)
}

var arguments = CommandLine.arguments.dropFirst()
guard let role = arguments.popFirst(), role == "server" || role == "client" else {
    fail("usage: socketipc-bench server|client --socket PATH --workload W [--n N] [--conns C] [--size S]")
}
var values: [String: String] = [:]
while let flag = arguments.popFirst() {
    guard let value = arguments.popFirst() else { fail("missing value after \(flag)") }
    values[flag] = value
}
guard let socket = values["--socket"] else { fail("--socket PATH is required") }
guard let workload = Workload(rawValue: values["--workload"] ?? "") else {
    fail("--workload must be one of \(Workload.allCases.map(\.rawValue).joined(separator: ", "))")
}
@MainActor func number(_ flag: String, default value: Int) -> Int {
    guard let text = values[flag] else { return value }
    guard let number = Int(text), number >= 0 else { fail("\(flag) needs a non-negative integer, got \(text)") }
    return number
}

let busyPollMicroseconds = number("--busy-poll-us", default: 0)
let maximumDescriptors = number("--max-descriptors", default: 0)
let sharedPayloadThreshold = values["--shared-payload-threshold"] == nil ? nil : number("--shared-payload-threshold", default: 0)
let zeroCopy = values["--zero-copy"] == "on"
let busyPoll: BusyPolling =
    values["--busy-poll"] == "off" ? .off
    : busyPollMicroseconds > 0 ? .fixed(.microseconds(busyPollMicroseconds)) : .adaptive()

var logger = Logger(label: "socketipc-bench")
logger.logLevel = .warning

if role == "server" {
    let server = BenchmarkServer.make(
        path: socket,
        workload: workload,
        busyPoll: busyPoll,
        maximumDescriptors: maximumDescriptors,
        sharedPayloadThreshold: sharedPayloadThreshold,
        mapsSharedPayloads: zeroCopy,
        logger: logger
    )
    let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    do {
        try await group.run()
    } catch {
        fail("\(error)")
    }
} else {
    let defaults = workload.defaults
    let options = BenchmarkOptions(
        socket: socket,
        workload: workload,
        n: number("--n", default: defaults.n),
        conns: number("--conns", default: defaults.conns),
        size: number("--size", default: defaults.size),
        busyPoll: busyPoll,
        maximumDescriptors: maximumDescriptors,
        sharedPayloadThreshold: sharedPayloadThreshold,
        loansSharedMemory: zeroCopy
    )
    do {
        let report = try await BenchmarkClient.run(options) {
            print("ready")
            fflush(nil)
        }
        if let report { print(report) }
    } catch {
        fail("\(error)")
    }
}
