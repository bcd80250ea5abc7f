import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes to a descriptor on a queue of its own, so that whoever hands it bytes never waits for the descriptor: a
/// server's event loop must not stop serving every client because nobody reads its standard output (a paused
/// `| less`). What waits is held up to ``limit`` bytes; beyond that, lines are dropped and counted, and once the
/// reader has caught up, one line on `notes` says how many (as journald reports what it suppressed).
final class QueuedWriter: Sendable {
    /// The most bytes waiting to be written: 16 MiB.
    static var limit: Int { 16 << 20 }

    private let descriptor: Int32
    private let queue: DispatchQueue
    private let state = Mutex<(waiting: Int, dropped: Int, written: Int)>((0, 0, 0))
    /// Where the count of dropped lines goes (standard error's writer); `nil` for standard error's own.
    private let notes: QueuedWriter?

    init(descriptor: Int32, label: String, notes: QueuedWriter?) {
        self.descriptor = descriptor
        self.queue = DispatchQueue(label: label)
        self.notes = notes
    }

    /// Queues `bytes` (whole lines) for writing, or drops them if ``limit`` bytes already wait.
    func write(_ bytes: [UInt8]) {
        let queued = self.state.withLock { state -> Bool in
            guard state.waiting + bytes.count <= Self.limit else {
                state.dropped += 1
                return false
            }
            state.waiting += bytes.count
            return true
        }
        guard queued else { return }
        self.queue.async {
            writeAll(bytes, to: self.descriptor)
            let dropped = self.state.withLock { state -> Int in
                state.waiting -= bytes.count
                state.written += bytes.count
                guard state.waiting == 0 else { return 0 }
                defer { state.dropped = 0 }
                return state.dropped
            }
            if dropped > 0 {
                let note = "socket-ipc: \(dropped) lines of output dropped while it was not read\n"
                self.notes?.write(Array(note.utf8))
            }
        }
    }

    /// Waits until what was queued before has been written, for as long as the reader keeps reading: gives up only
    /// once nothing has been written for `stall`. Returns what was left: the bytes not written, and the lines dropped
    /// at ``limit`` and not yet reported.
    func finish(stall: Duration) -> (unwritten: Int, dropped: Int) {
        var written = self.state.withLock { $0.written }
        while !self.drain(within: stall) {
            let now = self.state.withLock { $0.written }
            if now == written { break }
            written = now
        }
        return self.state.withLock { state in
            defer { state.dropped = 0 }
            return (state.waiting, state.dropped)
        }
    }

    /// Waits until what was queued before has been written, or `timeout` has passed; whether it was written.
    @discardableResult
    func drain(within timeout: Duration) -> Bool {
        let done = DispatchSemaphore(value: 0)
        self.queue.async { done.signal() }
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        return done.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .success
    }
}

/// Writes `bytes` to `descriptor` as ``writeAll(_:to:)`` does, waiting for it to take more until `deadline`, and
/// after it only while it takes some within each ``outputStallAfterDeadline``: returns whether everything was written
/// (or the write failed, which ``writeAll(_:to:)`` reports), `false` once the deadline has passed and the descriptor
/// took nothing for that long. A reader that reads, however slowly, is not cut off (found by a review: a pipe read at
/// 6 MB/s got 7 of 16 MB, then the command said that nothing read it), nor is an answer that came just before the
/// deadline; one that reads nothing holds the command for the deadline and a second. Writes at most `PIPE_BUF` bytes
/// after each wait: a pipe that polls writable takes that many without blocking.
/// - Parameter stallLimit: How long the descriptor may take nothing once the deadline has passed; default
///   ``outputStallAfterDeadline`` (tests give a reader that reads slowly on a loaded machine more).
func writeAll(
    _ bytes: [UInt8],
    to descriptor: Int32,
    by deadline: ContinuousClock.Instant,
    stallLimit: Duration = outputStallAfterDeadline
) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let left = max(ContinuousClock.now.duration(to: deadline), .zero)
        let wait = left == .zero ? stallLimit : left
        let (seconds, attoseconds) = wait.components
        let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
        var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        let polled = poll(&ready, 1, milliseconds)
        if polled < 0 && errno == EINTR { continue }
        if polled < 0 { usleep(1000) }  // ENOMEM: try the write anyway, after a moment, not in a tight loop.
        if polled == 0 {
            if left == .zero { return false }
            continue  // The deadline is looked at again above.
        }
        let end = min(bytes.count, offset + Int(PIPE_BUF))
        let written = bytes[offset..<end].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if written > 0 {
            offset += written
            continue
        }
        if written < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { continue }
        // A failure, reported (and acted on) as writeAll(_:to:) does.
        writeAll(Array(bytes[offset...]), to: descriptor)
        return true
    }
    return true
}

/// How long, once a command's deadline has passed, its standard output may take nothing before the command gives up
/// (``writeAll(_:to:by:)``): one second.
let outputStallAfterDeadline = Duration.seconds(1)

/// Writes all of `bytes` to `descriptor`, retrying on `EINTR` (where Foundation's `FileHandle.write` traps) and
/// waiting with `poll(2)` on `EAGAIN` (a descriptor left non-blocking by whoever shares it, such as a pipe from a
/// parent that set `O_NONBLOCK`). On standard output, `EPIPE` (its reader has gone, once `SIGPIPE` is ignored) is told
/// to ``Output/standardOutputClosed()`` and any other error (a full disk, an I/O error) to
/// ``Output/standardOutputFailed(_:)``, each of which ends most commands; then, and on standard error, the rest is
/// dropped.
func writeAll(_ bytes: [UInt8], to descriptor: Int32) {
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if written > 0 {
            offset += written
            continue
        }
        let error = written < 0 ? errno : EIO
        switch error {
        case EINTR:
            continue
        case EAGAIN, EWOULDBLOCK:
            var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
            if poll(&ready, 1, -1) < 0 && errno != EINTR { usleep(1000) }
            continue
        case EPIPE where descriptor == STDOUT_FILENO:
            Output.standardOutputClosed()
        default:
            if descriptor == STDOUT_FILENO { Output.standardOutputFailed(error) }
        }
        return
    }
}
