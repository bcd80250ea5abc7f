import NIOCore
import SocketIPC
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

/// A server that never acknowledges (it reads the message, or not even that, and keeps the connection open) must not
/// hold an EOF-style sender for ever: `timeout` ends the exchange with `timedOut`, cancelling the task ends it with
/// `CancellationError`, and either way the sender closes its socket.
@Suite("EOF-style sender: timeout and cancellation", .timeLimit(.minutes(5)), .limitedConcurrency)
struct EOFClientTimeoutTests {
    @Test(
        "a server that reads the whole message but never closes: timedOut after the timeout, and the socket is closed",
        arguments: [16, 4 * 1024 * 1024]
    )
    func silentServerTimesOut(size: Int) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let sending = Task {
                try await Client.sendMessage(ByteBuffer(repeating: 0x41, count: size), to: path, timeout: .milliseconds(300))
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            defer { _ = closeDescriptor(accepted) }
            // Read the message, but never answer. A small one is in the socket whatever the sender does next; a large
            // one may still be on its way when the timeout passes (on a loaded machine), and then arrives cut short.
            let read = try await SilentPeer.readUntilHalfClosed(accepted)
            #expect(size > 64 * 1024 ? read <= size : read == size)
            let error = await #expect(throws: SocketIPCError.self) { try await sending.value }
            #expect(error?.code == .timedOut)
            #expect(try await SilentPeer.waitUntilClosed(accepted), "the sender closed its socket")
        }
    }

    @Test("a timeout shorter than the send itself still ends the wait: timedOut every time, never a wait without limit")
    func shortTimeoutIsNeverLost() async throws {
        // A timer that fired before the wait was registered found nothing to end (found by review: 91 of 200 such
        // sends then waited for ever). Each send here is raced against a safety net far longer than it needs.
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            var lost = 0
            for _ in 0..<50 {
                let ended = try await withThrowingTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        let error = await #expect(throws: SocketIPCError.self) {
                            try await Client.sendMessage(ByteBuffer(string: "hi"), to: path, timeout: .microseconds(1))
                        }
                        #expect(error?.code == .timedOut)
                        return true
                    }
                    group.addTask {
                        try await Task.sleep(for: .seconds(20))
                        return false
                    }
                    let first = try await group.next()!
                    group.cancelAll()
                    return first
                }
                if !ended { lost += 1 }
                // Take the connection out of the listen backlog, so that the next one is not refused.
                _ = closeDescriptor(try await SilentPeer.acceptOne(on: listener))
            }
            #expect(lost == 0, "\(lost) of 50 sends with a 1 µs timeout waited without limit")
        }
    }

    @Test("a server that never reads a message larger than the socket buffers: timedOut while it is being written")
    func stalledWriteTimesOut() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/stalled.sock"
            // Listening, never accepting: the connection waits in the backlog and nothing is ever read.
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let error = await #expect(throws: SocketIPCError.self) {
                try await Client.sendMessage(
                    ByteBuffer(repeating: 0x41, count: 8 * 1024 * 1024),
                    to: path,
                    timeout: .milliseconds(300)
                )
            }
            #expect(error?.code == .timedOut)
            let accepted = try await SilentPeer.acceptOne(on: listener)
            defer { _ = closeDescriptor(accepted) }
            #expect(try await SilentPeer.waitUntilClosed(accepted), "the sender closed its socket")
        }
    }

    @Test(
        "cancelling the sender while it waits for the acknowledgement throws CancellationError and closes the socket",
        arguments: ["whole message", "message writer"]
    )
    func cancelledWhileWaiting(form: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/silent.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let sending = Task {
                if form == "whole message" {
                    _ = try await Client.sendMessage(ByteBuffer(string: "hello"), to: path)
                } else {
                    _ = try await Client.sendMessage(to: path) { writer in
                        try await writer.write(ByteBuffer(string: "hello"))
                    }
                }
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            defer { _ = closeDescriptor(accepted) }
            #expect(try await SilentPeer.readUntilHalfClosed(accepted) == 5)
            sending.cancel()
            await #expect(throws: CancellationError.self) { try await sending.value }
            #expect(try await SilentPeer.waitUntilClosed(accepted), "the sender closed its socket")
        }
    }

    @Test("a server that reads none of a small streamed message: timedOut after the stall timeout, once the body returned")
    func stalledServerTimesOutAfterTheBody() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/deaf.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let sending = Task {
                try await Client.sendMessage(to: path, stallTimeout: .milliseconds(200)) { writer in
                    try await writer.write(ByteBuffer(string: "hello"))
                }
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            defer { _ = closeDescriptor(accepted) }
            // Before, the watch stopped when the body returned, and the unread 5 bytes held the sender for good.
            let error = await #expect(throws: SocketIPCError.self) { try await sending.value }
            #expect(error?.code == .timedOut)
        }
    }

    @Test("a server that reads none of a streamed message: timedOut after the stall timeout, and the socket is closed")
    func stalledServerTimesOut() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/deaf.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let sending = Task {
                try await Client.sendMessage(to: path, stallTimeout: .milliseconds(300)) { writer in
                    // Far more than the socket and the channel hold: the writes wait for room from some point on.
                    for _ in 0..<(64 * 16) { try await writer.write(ByteBuffer(repeating: 0x41, count: 64 * 1024)) }
                }
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            defer { _ = closeDescriptor(accepted) }
            // Before, nothing ended the writes but cancelling the task.
            let error = await #expect(throws: SocketIPCError.self) { try await sending.value }
            #expect(error?.code == .timedOut)
            #expect(error?.message.contains("took nothing more of the message") == true, "\(String(describing: error))")
            #expect(try await SilentPeer.waitUntilClosed(accepted), "the sender closed its socket")
        }
    }

    @Test("a pause of the message's source is no stall: with nothing of it unread, the server is waiting, not stalled")
    func pausedSourceIsNotStalled() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/prompt.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let sending = Task {
                try await Client.sendMessage(to: path, stallTimeout: .milliseconds(200)) { writer in
                    try await writer.write(ByteBuffer(string: "abc"))
                    // The source has nothing for five stall timeouts (a pipe whose writer is slow): the scenario,
                    // not a wait for something to happen.
                    try await Task.sleep(for: .seconds(1))
                    try await writer.write(ByteBuffer(string: "def"))
                }
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            // Before, the server, which had read all there was, was cut off after two stall timeouts, and took "abc"
            // for the whole message.
            #expect(try await SilentPeer.readUntilHalfClosed(accepted) == 6)
            _ = closeDescriptor(accepted)
            let acknowledgement = try await sending.value
            #expect(acknowledgement.readableBytes == 0)
        }
    }

    @Test("a server that reads a streamed message slowly is not stalled: the message is delivered whole")
    func slowReaderIsNotStalled() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/slow.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { _ = closeDescriptor(listener) }
            let size = 2 * 1024 * 1024
            let sending = Task {
                try await Client.sendMessage(to: path, stallTimeout: .seconds(1)) { writer in
                    for _ in 0..<(size / (64 * 1024)) { try await writer.write(ByteBuffer(repeating: 0x41, count: 64 * 1024)) }
                }
            }
            let accepted = try await SilentPeer.acceptOne(on: listener)
            // 8 KiB every 20 ms (about 400 KB/s): the whole message takes about 5 s, five stall timeouts, and the
            // server reads something within each (fifty times, so that a loaded machine cannot make it look stalled).
            let read = try await SilentPeer.readUntilHalfClosed(accepted, chunk: 8 * 1024, pause: .milliseconds(20))
            #expect(read == size)
            _ = closeDescriptor(accepted)
            let acknowledgement = try await sending.value
            #expect(acknowledgement.readableBytes == 0)
        }
    }
}

/// The server's side of these tests, with plain blocking system calls on threads of their own.
private enum SilentPeer {
    static func acceptOne(on listener: Int32) async throws -> Int32 {
        try await acceptConnection(on: listener)
    }

    /// Reads until the sender's half-close or close (end-of-stream, or `ECONNRESET`); how many bytes came.
    /// Reads `chunk` bytes at a time, with `pause` after each.
    static func readUntilHalfClosed(_ descriptor: Int32, chunk size: Int = 65536, pause: Duration = .zero) async throws -> Int {
        try await onOwnThread {
            var total = 0
            var chunk = [UInt8](repeating: 0, count: size)
            while true {
                let got = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                if got == 0 || (got < 0 && errno == ECONNRESET) { return total }
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else { throw RawSocketError.failed("read", errno) }
                total += got
                if pause > .zero { usleep(UInt32(pause.components.attoseconds / 1_000_000_000_000)) }
            }
        }
    }

    /// Whether the sender closed its socket within 20 s (a safety net, not a wait): `POLLHUP` (both directions
    /// ended) or `POLLERR` (it closed with bytes of ours unread), which `poll` reports whatever the events asked.
    static func waitUntilClosed(_ descriptor: Int32) async throws -> Bool {
        try await onOwnThread {
            var entry = pollfd(fd: descriptor, events: 0, revents: 0)
            while true {
                let ready = poll(&entry, 1, 20_000)
                if ready < 0 && errno == EINTR { continue }
                return ready > 0 && entry.revents & Int16(POLLHUP | POLLERR) != 0
            }
        }
    }
}
