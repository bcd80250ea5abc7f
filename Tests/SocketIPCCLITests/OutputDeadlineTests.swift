import Foundation
import Testing

@testable import socket_ipc

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A command's `--timeout` bounds its wait for a standard output that takes nothing, not a reader that reads slowly
/// (found by a review: a pipe read at 6 MB/s got 7 of 16 MB, then the command said that nothing read it).
@Suite("Standard output after a command's deadline", .timeLimit(.minutes(1)))
struct OutputDeadlineTests {
    /// A pipe whose write end is full: 64 KiB written that nobody has read yet.
    static func fullPipe() throws -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        let flags = fcntl(ends[1], F_GETFL)
        _ = fcntl(ends[1], F_SETFL, flags | O_NONBLOCK)
        let block = [UInt8](repeating: 0x2E, count: Int(PIPE_BUF))
        while write(ends[1], block, block.count) > 0 {}
        _ = fcntl(ends[1], F_SETFL, flags)
        return (ends[0], ends[1])
    }

    /// Runs `body` on a thread of its own: it blocks in poll(2) and read(2), which must not hold one of the few
    /// threads that Swift's concurrency (and the other tests) run on.
    static func onThread<Result: Sendable>(_ body: @escaping @Sendable () -> Result) async -> Result {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: body()) }
        }
    }

    @Test("past the deadline, a reader that takes some every 50 ms gets everything")
    func slowReaderGetsEverything() async throws {
        let (reader, writer) = try Self.fullPipe()
        defer { close(reader) }
        let total = 64 * 1024 + 128 * 1024
        let reading = Task {
            await Self.onThread { () -> Int in
                var buffer = [UInt8](repeating: 0, count: 16 * 1024)
                var got = 0
                while true {
                    usleep(50_000)  // the pace of a slow reader, not a synchronisation
                    let count = read(reader, &buffer, buffer.count)
                    guard count > 0 else { return got }
                    got += count
                }
            }
        }
        // The deadline has passed before the first byte. The stall limit is generous: on a loaded machine the
        // reader's thread may not run for more than the default second between two reads (a full test run beside
        // two builds failed so), and a reader that reads is what this test is about.
        let written = await Self.onThread { () -> Bool in
            defer { close(writer) }
            return writeAll([UInt8](repeating: 0x41, count: 128 * 1024), to: writer, by: .now, stallLimit: .seconds(30))
        }
        #expect(written)
        #expect(await reading.value == total)
    }

    @Test("past the deadline, a reader that takes nothing ends the write after a second, without it")
    func stoppedReaderEndsIt() async throws {
        let (reader, writer) = try Self.fullPipe()
        defer {
            close(reader)
            close(writer)
        }
        let start = ContinuousClock.now
        #expect(!(await Self.onThread { writeAll([UInt8](repeating: 0x41, count: 1024), to: writer, by: .now) }))
        #expect(ContinuousClock.now - start >= outputStallAfterDeadline)
    }
}
