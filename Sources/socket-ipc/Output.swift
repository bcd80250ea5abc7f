import ArgumentParser
import Foundation
import NIOCore
import SocketIPC
import Synchronization

/// Writes whole lines to standard output from any thread, flushed at once, so that lines of concurrent
/// servers and clients never interleave and reach a pipe immediately.
enum Output {
    private static let lock = Mutex(())

    static func line(_ text: String) {
        lock.withLock { _ in
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        }
    }

    static func error(_ text: String) {
        lock.withLock { _ in
            FileHandle.standardError.write(Data(("error: " + text + "\n").utf8))
        }
    }
}

/// Runs `body`; a ``SocketIPCError`` becomes `error: <message>` on standard error and exit status 1.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as SocketIPCError {
        Output.error(error.message)
        throw ExitCode.failure
    }
}

/// A payload for display: its text if it is printable UTF-8, otherwise hex.
func describe(_ buffer: ByteBuffer) -> String {
    let bytes = Array(buffer.readableBytesView)
    if let text = String(validating: bytes, as: UTF8.self),
        text.unicodeScalars.allSatisfy({ $0.properties.isWhitespace || !$0.properties.generalCategory.isControl })
    {
        return "\"\(text)\""
    }
    return "0x" + bytes.prefix(64).map { String(format: "%02x", $0) }.joined() + (bytes.count > 64 ? "…" : "")
}

extension Unicode.GeneralCategory {
    var isControl: Bool { self == .control || self == .format || self == .unassigned }
}

/// Parses an octal permission string such as `0600` or `660`.
func parsePermissions(_ text: String) throws -> UInt16 {
    guard let mode = UInt16(text, radix: 8), mode <= 0o777 else {
        throw ValidationError("--permissions must be octal, from 0 to 0777, such as 0600; got \(text)")
    }
    return mode
}
