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

/// Adaptive busy polling (the default) polls only while traffic flows: a server whose client has gone quiet, with
/// its connection still open, sleeps.
@Suite("Adaptive busy polling: an idle server sleeps", .timeLimit(.minutes(5)), .limitedConcurrency)
struct IdleCPUTests {
    #if os(Linux)
    /// The CPU time a process has used, in clock ticks (user + system, `/proc/PID/stat` fields 14 and 15).
    static func cpuTicks(of processID: pid_t) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(processID)/stat", encoding: .utf8)
        // The command name (field 2) may hold spaces; the fields after its closing parenthesis are plain.
        let fields = text[text.index(after: try #require(text.lastIndex(of: ")")))...].split(separator: " ")
        // fields[0] is field 3 (the state): utime is field 14, stime field 15.
        return try #require(Int(fields[11])) + #require(Int(fields[12]))
    }

    @Test("after 2,000 round trips that opened the polling window, an idle connection costs the server no CPU")
    func idleAfterTraffic() async throws {
        try await withServeCommand { path, server in
            try await Client.withConnection(to: path) { connection in
                for index in 0..<2_000 {
                    let reply = try await connection.request(ByteBuffer(string: "r\(index)"))
                    #expect(String(buffer: reply) == "r\(index)")
                }
                // The window closes at most 200 µs after the last message; the measured second starts well after.
                try await Task.sleep(for: .milliseconds(100))
                let before = try Self.cpuTicks(of: server.processID)
                // The measured interval, not a synchronisation: a polling server would use about one tick per 10 ms
                // of it, a sleeping one none.
                try await Task.sleep(for: .seconds(1))
                let after = try Self.cpuTicks(of: server.processID)
                #expect(after - before <= 10, "the idle server used \(after - before) clock ticks in a second")
                #expect(connection.isOpen)
            }
        }
    }
    #endif
}
