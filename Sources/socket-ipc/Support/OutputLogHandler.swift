import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The command's swift-log handler: the lines of swift-log's `StreamLogHandler.standardError`, written through
/// ``Output`` instead of straight to standard error.
///
/// The library logs from its event loops and its accept thread (a connection opened or closed, a peer that did not
/// answer a keepalive ping). Written at once, as `StreamLogHandler` writes, one such line to a standard error that
/// nobody reads (`2>&1 | less`, paused) stopped that loop, and every client on it, in `write(2)`; a hostile client
/// could fill the pipe with connections of its own. A server (`serve`, `listen`) writes its lines through a queue
/// instead (``Output/writeWithoutWaiting()``), which drops and counts what goes beyond its bound, as journald does
/// with what it suppresses.
///
/// A line is one line, safe on a terminal: its message and metadata can quote what a peer sent (a going-away
/// message), so they are escaped as ``SafeText/oneLine(_:)`` escapes such text, and no peer can print a line of its
/// own or act on the terminal.
struct OutputLogHandler: LogHandler {
    /// The logger's label, printed after the level.
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var metadata = self.metadata
        if let provided = self.metadataProvider?.get() { metadata.merge(provided) { _, provided in provided } }
        if let explicit = event.metadata { metadata.merge(explicit) { _, explicit in explicit } }
        if let error = event.error {
            metadata["error.message"] = "\(error)"
            metadata["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        // Each value and the message at most 1 KiB, as describe() cuts a payload: a peer's going-away text can be
        // 16 MiB, escaped on the event loop (found by a review: a benign request waited 11.5 s).
        let pretty = metadata.sorted { $0.key < $1.key }.map { " \($0.key)=\(Self.cut("\($0.value)"))" }.joined()
        let label = self.label.isEmpty ? "" : " " + self.label
        let line = "\(event.level)\(label):\(pretty) [\(event.source)] \(Self.cut("\(event.message)"))"
        Output.errorLine("\(Self.timestamp()) " + SafeText.message(line))
    }

    /// `text`, or its first 1 KiB and `…`.
    static func cut(_ text: String) -> String {
        guard text.utf8.count > 1024 else { return text }
        return String(decoding: text.utf8.prefix(1024), as: UTF8.self) + "…"
    }

    /// Now, in local time, as `StreamLogHandler` prints it: `2026-12-02T03:04:05+0000`.
    static func timestamp() -> String {
        var now = time(nil)
        var local = tm()
        guard localtime_r(&now, &local) != nil else { return "<unknown>" }
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &local)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
