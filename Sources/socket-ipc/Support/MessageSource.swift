import Foundation
import NIOCore
import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a command's MESSAGE comes from: the argument's text, `@FILE`, or standard input (no argument, or `-`), as
/// curl's `--data @FILE` and grpcurl's `-d @` read theirs.
enum MessageSource: Sendable {
    /// The argument's own text.
    case text(String)
    /// The file the argument names after its `@`.
    case file(String)
    /// Standard input, until EOF.
    case standardInput

    /// The source that `argument` names.
    init(argument: String?) {
        switch argument {
        case nil, "-": self = .standardInput
        case let argument? where argument.hasPrefix("@"): self = .file(String(argument.dropFirst()))
        case let argument?: self = .text(argument)
        }
    }

    /// What to call the source in a message.
    var name: String {
        switch self {
        case .text: "the argument"
        case .file(let path): path
        case .standardInput: "standard input"
        }
    }

    /// Runs `body` with the source's bytes as chunks and their total size when it is known (a text, a regular
    /// file); a file is opened for the length of `body`.
    /// - Throws: ``UsageError`` when the file cannot be opened; what `body` throws.
    func withChunks<Result>(
        _ body: (_ chunks: InputChunks, _ total: Int?) async throws -> Result
    ) async throws -> Result {
        switch self {
        case .text(let text):
            let buffer = ByteBuffer(string: text)
            return try await body(InputChunks(buffer: buffer), buffer.readableBytes)
        case .standardInput:
            return try await body(InputChunks.standardInput(), nil)
        case .file(let path):
            let descriptor = open(path, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else {
                throw UsageError(message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(descriptor) }
            var status = stat()
            let isFile = fstat(descriptor, &status) == 0
            // A directory opens for reading, and fails at the first read: said here, with its name.
            if isFile, (status.st_mode & S_IFMT) == S_IFDIR {
                throw UsageError(message: "cannot read \(path): it is a directory")
            }
            let total: Int? = isFile && (status.st_mode & S_IFMT) == S_IFREG ? Int(status.st_size) : nil
            return try await body(InputChunks(descriptor: descriptor), total)
        }
    }

    /// All of the source's bytes, at most `limit` of them.
    /// - Parameter limit: The most bytes to hold: a framed message's maximum size (16 MiB by default); the reading
    ///   stops as soon as the source has more, so `@/dev/zero` or an endless pipe costs `limit` bytes, not all memory.
    /// - Throws: ``UsageError`` when the file cannot be read or holds more than `limit` bytes.
    func readAll(limit: Int = ConnectionOptions().maximumMessageSize) async throws -> ByteBuffer {
        try await self.withChunks { chunks, total in
            if let total, total > limit { throw Self.tooLarge(self.name, limit: limit, size: total) }
            var all = ByteBuffer()
            for try await var chunk in chunks {
                guard all.readableBytes + chunk.readableBytes <= limit else {
                    throw Self.tooLarge(self.name, limit: limit, size: nil)
                }
                all.writeBuffer(&chunk)
            }
            return all
        }
    }

    /// The error for a message of `size` bytes (`nil`: more than `limit`, and reading stopped there).
    private static func tooLarge(_ name: String, limit: Int, size: Int?) -> UsageError {
        let size = size.map { "\($0) bytes" } ?? "more than \(limit) bytes"
        return UsageError(
            message: "the message in \(name) is too large: \(size), and a framed message holds at most \(limit) "
                + "(send a larger one EOF-style: socket-ipc send --eof)"
        )
    }
}
