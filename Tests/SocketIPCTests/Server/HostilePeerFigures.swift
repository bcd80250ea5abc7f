import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import Testing

/// Prints the memory figures of SECURITY.md that need a handler of the test's own (the CLI's server answers at
/// once). Off by default; run it alone, so that other tests do not move the process's RSS:
///
///     SOCKETIPC_MEASURE=1 swift test --filter HostilePeerFigures
///
/// It asserts nothing about memory (figures are measured, never asserted), only that the handler saw no more than
/// `maximumConcurrentRequests` of the requests at once.
@Suite(
    "Hostile-peer memory figures",
    .serialized,
    .enabled(if: ProcessInfo.processInfo.environment["SOCKETIPC_MEASURE"] == "1"),
    .enabled(if: runsOnLinux, "reads the resident set size from /proc")
)
struct HostilePeerFigures {
    @Test("200,000 requests to a handler that holds each one")
    func requestsToASlowHandler() async throws {
        let gate = Gate()
        let started = Atomic<Int>(0)
        let total = 200_000
        try await withFramedTestServer(
            makeHandler: {
                AsyncRequestHandler { request, _ in
                    guard String(buffer: request) == "abcd" else { return request }
                    started.add(1, ordering: .relaxed)
                    await gate.wait()
                    return request
                }
            }
        ) { _, path in
            _ = try await Client.withConnection(to: path) { try await $0.request(ByteBuffer(string: "warm")) }
            let baseline = residentKiB()
            var stream = helloBytes
            stream.reserveCapacity(8 + total * 13)
            for id in 1...total { stream += frameBytes(kind: 0x02, id: UInt32(id), payload: Array("abcd".utf8)) }
            let socket = try await RawSocket.connect(to: path)
            let taken = try await socket.sendUntilStalled(stream, stalledAfterMilliseconds: 3000)
            let peak = residentKiB()
            print(
                "slow handler: baseline \(baseline / 1024) MiB, +\((peak - baseline) / 1024) MiB with "
                    + "\(started.load(ordering: .relaxed)) requests handed out and \(taken / 13) written "
                    + "(\(total) tried)"
            )
            #expect(started.load(ordering: .relaxed) <= ConnectionOptions().maximumConcurrentRequests)
            await gate.open()
            socket.close()
            // The server notices the close and drops the connection; give it a moment before measuring.
            try await Task.sleep(for: .seconds(2))
            print("slow handler: after disconnect +\((residentKiB() - baseline) / 1024) MiB")
        }
    }
}

/// Holds every caller of ``wait()`` until ``open()``.
actor Gate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if self.isOpen { return }
        await withCheckedContinuation { self.waiters.append($0) }
    }

    func open() {
        self.isOpen = true
        for waiter in self.waiters { waiter.resume() }
        self.waiters = []
    }
}

/// This process's resident set size, in KiB, from `/proc` (Linux only); -1 where there is none.
func residentKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return -1 }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
}
