import ArgumentParser
import Foundation
import NIOCore
import SocketIPC
import Synchronization

/// Writes whole lines to standard output or standard error from any thread, unbuffered, so that the lines of
/// concurrent servers and clients never interleave and reach a pipe at once (a test waits for `listening on`).
/// Each has a lock of its own: a standard output that nobody reads (a paused `| less`) blocks its writers, never
/// an error on its way to standard error.
///
/// A server (`serve`, `listen`) writes through ``QueuedWriter``s instead (``writeWithoutWaiting()``): its lines are
/// printed by its event loops, which must not wait for a reader of standard output.
enum Output {
    private static let outputLock = Mutex(())
    private static let errorLock = Mutex(())
    /// The writers of standard output and standard error once ``writeWithoutWaiting()`` was called.
    private static let queued = Mutex<(output: QueuedWriter, error: QueuedWriter)?>(nil)

    /// From now on, lines are written by a queue of each descriptor's own, and whoever prints never waits: for a
    /// server. ``finish(within:)`` writes what is left before the process exits.
    static func writeWithoutWaiting() {
        self.queued.withLock { queued in
            guard queued == nil else { return }
            let error = QueuedWriter(descriptor: STDERR_FILENO, label: "socket-ipc.stderr", notes: nil)
            let output = QueuedWriter(descriptor: STDOUT_FILENO, label: "socket-ipc.stdout", notes: error)
            queued = (output, error)
        }
    }

    /// Whether the process ends once standard output's reader has gone (``standardOutputClosed()``); `serve` turns it
    /// off.
    private static let endsWithStandardOutput = Atomic<Bool>(true)

    /// From now on the command goes on when standard output's reader has gone: for `serve`, whose output only shows
    /// what it serves. (systemd ignores `SIGPIPE` in services by default for this reason: a journal that restarts
    /// must not end them.)
    static func outlivesStandardOutput() {
        self.endsWithStandardOutput.store(false, ordering: .relaxed)
    }

    /// Standard output's reader has gone (a write failed with `EPIPE`): unless ``outlivesStandardOutput()`` was
    /// called, the process ends as one killed by `SIGPIPE` does, as `yes | head` ends, so that `watch PATH method
    /// | head -n 2` and `listen PATH | head` end instead of running on with nobody to read what they print.
    /// `SIGPIPE` is ignored otherwise (see `SocketIPCCommand.main()`), so that sockets and standard error never
    /// end the process.
    ///
    /// A command that registered ``onReaderGone(_:)`` (`listen`, a server) is stopped by its action instead, and ends
    /// so once its server has removed its socket file (``endAsClosedPipe()``); what it prints meanwhile is dropped.
    static func standardOutputClosed() {
        guard self.endsWithStandardOutput.load(ordering: .relaxed) else { return }
        let isFirst = !self.readerGone.exchange(true, ordering: .acquiringAndReleasing)
        if let action = self.readerGoneAction.withLock({ $0 }) {
            // Later, the stop is under way: what is printed meanwhile is dropped.
            if isFirst { action() }
            return
        }
        self.endAsClosedPipe()
    }

    /// Whether standard output's reader has gone (a write failed with `EPIPE`, or ``watchForReaderGone()`` saw it).
    static var readerHasGone: Bool { self.readerGone.load(ordering: .acquiring) }

    private static let readerGone = Atomic<Bool>(false)
    private static let readerGoneAction = Mutex<(@Sendable () -> Void)?>(nil)

    /// Once standard output's reader has gone, `action` runs (once) instead of the process ending at once: for a
    /// server that must stop, and remove its socket file, before it ends as ``endAsClosedPipe()``.
    static func onReaderGone(_ action: @escaping @Sendable () -> Void) {
        self.readerGoneAction.withLock { $0 = action }
    }

    /// Watches standard output, when it is a pipe or a socket, for its reader's going, in a thread of its own, and
    /// then does what a write that failed with `EPIPE` does (``standardOutputClosed()``): so that a command that
    /// prints rarely (a quiet `watch ... | head -1`, a `listen | head -1` after its line) ends when its reader
    /// does, not at its next line, as GNU `tail -f` does since coreutils 8.28. `poll(2)` with no events asked reports
    /// `POLLERR` on a pipe whose read end is closed and `POLLHUP` on a socket whose peer closed; a terminal or a file
    /// has no reader to lose.
    static func watchForReaderGone() {
        #if os(Linux)
        var status = stat()
        guard fstat(STDOUT_FILENO, &status) == 0 else { return }
        let type = status.st_mode & S_IFMT
        guard type == S_IFIFO || type == S_IFSOCK else { return }
        Thread.detachNewThread {
            var watched = pollfd(fd: STDOUT_FILENO, events: 0, revents: 0)
            while true {
                let ready = poll(&watched, 1, -1)
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0, watched.revents & Int16(POLLERR | POLLHUP) != 0 else { return }
                self.standardOutputClosed()
                return
            }
        }
        #endif
        // Elsewhere (Darwin, untested) poll(2) may report nothing when no event is asked for: the next line's write
        // finds the reader gone, as before.
    }

    /// Ends the process as one killed by `SIGPIPE` (status 141 in a shell), as `yes | head` ends.
    static func endAsClosedPipe() -> Never {
        signal(SIGPIPE, SIG_DFL)
        var pipe = sigset_t()
        sigemptyset(&pipe)
        sigaddset(&pipe, SIGPIPE)
        // Unblocked in this thread, a signal it raises is delivered before raise(3) returns.
        pthread_sigmask(SIG_UNBLOCK, &pipe, nil)
        raise(SIGPIPE)
        _exit(128 + SIGPIPE)
    }

    /// Whether a write to standard output failed with an error other than `EPIPE` (``standardOutputFailed(_:)``).
    private static let standardOutputFailureReported = Atomic<Bool>(false)
    /// Whether a command that registered ``onReaderGone(_:)`` is stopping because a write to standard output failed
    /// (not because its reader went): it ends with status 74, not as `SIGPIPE`.
    private static let standardOutputWriteFailed = Atomic<Bool>(false)

    /// Ends a command that ``onReaderGone(_:)`` stopped, once its server is down: with status 74 after a failed write
    /// (``standardOutputFailed(_:)``), else as `SIGPIPE` would have ended it (``endAsClosedPipe()``).
    static func endAfterStandardOutputLost() -> Never {
        if self.standardOutputWriteFailed.load(ordering: .acquiring) { _exit(ExitStatus.outputFailed.rawValue) }
        self.endAsClosedPipe()
    }

    /// A write to standard output failed with `code`, an error other than `EPIPE`: a full disk (`ENOSPC`), an I/O
    /// error. Unless ``outlivesStandardOutput()`` was called, the command ends at once, with status 74 (`EX_IOERR` of
    /// sysexits(3)) and the error on standard error, as GNU tools end on a write error (`yes > /dev/full`): a script
    /// must not take output that was lost for a result. `serve` says so once on standard error and goes on.
    ///
    /// A command that registered ``onReaderGone(_:)`` (`listen`) is stopped by its action first, as when the reader
    /// has gone, so that its server removes its socket file and lock file (found by a review: `listen > /dev/full`
    /// left both behind); it then ends with status 74 (``endAfterStandardOutputLost()``).
    static func standardOutputFailed(_ code: Int32) {
        guard !self.standardOutputFailureReported.exchange(true, ordering: .relaxed) else { return }
        let cause = "\(String(cString: strerror(code))) (errno \(code))"
        guard self.endsWithStandardOutput.load(ordering: .relaxed) else {
            self.errorLine("socket-ipc: writing standard output failed: \(cause); its output is dropped from now on")
            return
        }
        if self.readerGoneAction.withLock({ $0 }) != nil {
            self.standardOutputWriteFailed.store(true, ordering: .releasing)
            self.errorLine("socket-ipc: error: writing standard output failed: \(cause)")
            self.standardOutputClosed()
            return
        }
        // Straight to the descriptor: standard error's queued writer is not drained after _exit(2).
        let line = Array("socket-ipc: error: writing standard output failed: \(cause)\n".utf8)
        line.withUnsafeBytes { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
        _exit(ExitStatus.outputFailed.rawValue)
    }

    /// Whether the command ends because SIGINT or SIGTERM asked it to (``stoppedBySignal()``).
    private static let signalled = Atomic<Bool>(false)

    /// The command ends because SIGINT or SIGTERM asked it to: ``finish(stall:)`` then waits for a reader that
    /// stopped reading no longer than its stall limit.
    static func stoppedBySignal() {
        self.signalled.store(true, ordering: .relaxed)
    }

    /// Before the process exits: waits for what the queued writers hold to be written, then says on standard error
    /// what was dropped or left unwritten, if anything. After ``stoppedBySignal()``, it waits as long as the readers
    /// read, and gives up on one that has read nothing for `stall` (2 s by default): a reader that never reads must
    /// not keep a stopped server from exiting. Otherwise (a `listen --count` that is done) it waits as any program
    /// writing to a pipe does, for ever, SIGINT and SIGTERM then ending the process at once.
    static func finish(stall: Duration = .seconds(2)) {
        guard let queued = self.queued.withLock({ $0 }) else { return }
        if !self.signalled.load(ordering: .relaxed) {
            signal(SIGINT, SIG_DFL)
            signal(SIGTERM, SIG_DFL)
            while !queued.output.drain(within: stall) {}
        }
        let (unwritten, dropped) = queued.output.finish(stall: stall)
        if dropped > 0 || unwritten > 0 {
            var lost: [String] = []
            if dropped > 0 { lost.append("\(dropped) lines of output dropped while it was not read") }
            if unwritten > 0 { lost.append("\(unwritten) bytes of output not written: nothing was read for \(stall)") }
            queued.error.write(Array(("socket-ipc: " + lost.joined(separator: "; ") + "\n").utf8))
        }
        _ = queued.error.finish(stall: stall)
    }

    /// Writes `bytes` to standard output (`toError` false) or standard error, at once under the descriptor's lock,
    /// or through its queued writer.
    private static func emit(_ bytes: [UInt8], toError: Bool) {
        if let queued = self.queued.withLock({ $0 }) {
            (toError ? queued.error : queued.output).write(bytes)
            return
        }
        if toError {
            self.errorLock.withLock { _ in writeAll(bytes, to: STDERR_FILENO) }
        } else {
            self.outputLock.withLock { _ in writeAll(bytes, to: STDOUT_FILENO) }
        }
    }
    private static let settings = Mutex(Verbosity.normal)

    /// How much a command says besides its results and errors.
    enum Verbosity: Comparable, Sendable {
        /// Results and errors only (`--quiet`).
        case quiet
        /// Results, errors and notes such as `listening on PATH`.
        case normal
        /// Also details of each step (`--verbose`).
        case verbose
    }

    /// How much to say; set once from ``OutputOptions`` before a command runs.
    static var verbosity: Verbosity {
        get { self.settings.withLock { $0 } }
        set { self.settings.withLock { $0 = newValue } }
    }

    /// Whether to colour what goes to `descriptor`: only on a terminal, never with `NO_COLOR` set to anything but the
    /// empty string (https://no-color.org) and never with `TERM=dumb`.
    static func usesColor(on descriptor: Int32) -> Bool {
        let environment = ProcessInfo.processInfo.environment
        if let noColor = environment["NO_COLOR"], !noColor.isEmpty { return false }
        if environment["TERM"] == "dumb" { return false }
        return isatty(descriptor) == 1
    }

    /// `text` in the ANSI colour `code` (31 red, 32 green, 33 yellow, 2 dim) when ``usesColor(on:)`` says so for
    /// `descriptor`, else `text` as it is.
    static func colored(_ text: String, _ code: Int, on descriptor: Int32) -> String {
        self.usesColor(on: descriptor) ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }

    /// Writes `text` and a newline to standard error unless ``verbosity`` is ``Verbosity/quiet``: a note, such as
    /// `listening on PATH`, that is not a result.
    static func note(_ text: String) {
        guard self.verbosity >= .normal else { return }
        self.errorLine(text)
    }

    /// Writes `text` and a newline to standard error when ``verbosity`` is ``Verbosity/verbose``.
    static func detail(_ text: String) {
        guard self.verbosity >= .verbose else { return }
        self.errorLine(text)
    }

    /// Writes `object` as one line of JSON (sorted keys, no escaped slashes) to standard output: the form of every
    /// `--json` result.
    static func json(_ object: [String: Any]) {
        guard let line = self.jsonLine(object) else { return }
        self.line(line)
    }

    /// `object` as one line of JSON, sorted keys and no escaped slashes; `nil` if it is not JSON.
    private static func jsonLine(_ object: [String: Any]) -> String? {
        let options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: options) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Writes raw `text` (no newline) to standard error, for a progress line redrawn with `\r`.
    static func progress(_ text: String) {
        self.emit(Array(text.utf8), toError: true)
    }

    /// Writes `text` and a newline to standard output.
    static func line(_ text: String) {
        self.emit(Array((text + "\n").utf8), toError: false)
    }

    /// Writes `text` and a newline to standard output as ``line(_:)`` does, but waits for a reader that takes nothing
    /// only until `deadline` (a command's `--timeout`); `nil` waits as long as ``line(_:)``.
    /// - Throws: `SocketIPCError` with code `timedOut` (exit status 5) when standard output took nothing more until
    ///   `deadline`; the line may then be written in part.
    static func line(_ text: String, by deadline: ContinuousClock.Instant?) throws {
        try self.writeOutput(Array((text + "\n").utf8), by: deadline)
    }

    /// Writes `object` as ``json(_:)`` does, waiting for standard output only until `deadline` as
    /// ``line(_:by:)`` does.
    static func json(_ object: [String: Any], by deadline: ContinuousClock.Instant?) throws {
        guard let line = self.jsonLine(object) else { return }
        try self.line(line, by: deadline)
    }

    /// Writes the bytes of `buffer` as they are to standard output, then a newline unless they end with one.
    static func raw(_ buffer: ByteBuffer) {
        self.emit(self.rawBytes(buffer), toError: false)
    }

    /// Writes `buffer` as ``raw(_:)`` does, waiting for standard output only until `deadline` as ``line(_:by:)``
    /// does.
    static func raw(_ buffer: ByteBuffer, by deadline: ContinuousClock.Instant?) throws {
        try self.writeOutput(self.rawBytes(buffer), by: deadline)
    }

    private static func rawBytes(_ buffer: ByteBuffer) -> [UInt8] {
        var bytes = Array(buffer.readableBytesView)
        if bytes.last != UInt8(ascii: "\n") { bytes.append(UInt8(ascii: "\n")) }
        return bytes
    }

    /// Writes `bytes` to standard output, waiting for a reader that takes nothing only until `deadline` (found by a
    /// review: `request --timeout 2` and `call --timeout 2` whose standard output nobody read waited for good, where
    /// `watch` ended after 2 s).
    private static func writeOutput(_ bytes: [UInt8], by deadline: ContinuousClock.Instant?) throws {
        guard let deadline, self.queued.withLock({ $0 }) == nil else {
            return self.emit(bytes, toError: false)
        }
        let taken = self.outputLock.withLock { _ in writeAll(bytes, to: STDOUT_FILENO, by: deadline) }
        guard taken else {
            throw SocketIPCError(
                .timedOut,
                "standard output took nothing for a second after the deadline (--timeout): nothing reads it"
            )
        }
    }

    /// Writes `error: ` (red on a terminal), `text` and a newline to standard error: one line, whatever `text` holds
    /// (a peer's text in it can neither act on the terminal nor pass for a line of its own: ``SafeText/message(_:)``).
    static func error(_ text: String) {
        self.errorLine(self.colored("error:", 31, on: STDERR_FILENO) + " " + SafeText.message(text))
    }

    /// Writes `text` and a newline to standard error.
    static func errorLine(_ text: String) {
        self.emit(Array((text + "\n").utf8), toError: true)
    }
}

/// A payload for display on one line: its text in quotes if it is printable UTF-8, with newlines, tabs and the other
/// characters that could end the line or act on a terminal escaped (``SafeText/oneLine(_:)``: a peer's text can
/// neither forge a line of its own nor move the cursor), and only its first 1,024 bytes, then `…`; otherwise `0x`
/// and its hex (the first 64 bytes).
func describe(_ buffer: ByteBuffer) -> String {
    let limit = 1024
    let bytes = Array(buffer.readableBytesView.prefix(limit))
    // A cut may fall inside a character: the text then ends before it.
    let text = (0...min(3, max(bytes.count - 1, 0))).lazy.compactMap {
        String(validating: bytes.dropLast($0), as: UTF8.self)
    }.first
    if let text, text.unicodeScalars.allSatisfy({ $0.properties.isWhitespace || !$0.properties.generalCategory.isControl }) {
        return "\"" + SafeText.oneLine(text) + "\"" + (buffer.readableBytes > text.utf8.count ? "…" : "")
    }
    return "0x" + bytes.prefix(64).map { String(format: "%02x", $0) }.joined() + (buffer.readableBytes > 64 ? "…" : "")
}

extension Unicode.GeneralCategory {
    /// Whether a character of this category would garble a terminal line.
    fileprivate var isControl: Bool { self == .control || self == .format || self == .unassigned }
}

/// Parses an octal permission string such as `0600` or `660`.
/// - Throws: `ValidationError` when `text` is not octal or above `0777`.
func parsePermissions(_ text: String) throws -> UInt16 {
    guard let mode = UInt16(text, radix: 8), mode <= 0o777 else {
        throw ValidationError("--permissions must be octal, from 0 to 0777, such as 0600; got \(text)")
    }
    return mode
}

/// The longest duration the command line passes on: about 31 years, far beyond any timeout and far inside what a
/// `Duration` of nanoseconds in 64 bits and NIO's `TimeAmount` can hold.
let longestDuration: Double = 1_000_000_000

/// Seconds given on the command line as a `Duration`; anything above ``longestDuration`` (`inf` included) is taken
/// as that, and anything below 0 (or not a number) as 0, so that no value can overflow.
func duration(seconds: Double) -> Duration {
    let clamped = seconds.isNaN ? 0 : min(max(seconds, 0), longestDuration)
    return .nanoseconds(Int64((clamped * 1_000_000_000).rounded()))
}
