import Foundation
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A command whose standard output nobody reads (a paused `| less`) blocks in `write(2)`; SIGINT and SIGTERM must end
/// it all the same, as they end any process blocked so.
@Suite("Commands whose standard output nobody reads", .timeLimit(.minutes(2)))
struct BlockedOutputTests {
    @Test("watch whose standard output nobody reads ends on SIGTERM, with exit 0")
    func watchEndsOnSIGTERM() async throws {
        try await withServeCommand { path, _ in
            let fifo = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("out").path
            #expect(mkfifo(fifo, 0o600) == 0)
            // Opened to read, so that the command's open of it goes through; never read.
            let reader = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            try #require(reader >= 0)
            defer { close(reader) }
            let watch = try TestProcess(
                executable: "/bin/sh",
                ["-c", #"exec "$0" watch --socket "$1" demo.count 100000000 > "$2""#, socketIPCBinary, path, fifo],
                // Before, it ran until killed: this turns that into a failure (status 137).
                timeLimit: .seconds(30)
            )
            // The pipe's 64 KiB fill up, and the command's next write waits.
            var waiting: Int32 = 0
            for _ in 0..<3000 where waiting < 65_536 - 100 {
                _ = ioctl(reader, UInt(FIONREAD), &waiting)
                try await Task.sleep(for: .milliseconds(10))
            }
            try #require(waiting >= 65_536 - 100, "the pipe holds \(waiting) bytes")
            watch.signal(SIGTERM)
            #expect(await watch.waitForExit() == 0)
        }
    }
}
