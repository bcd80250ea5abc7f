import SocketIPC

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file `send --fd` opened read-only to pass its descriptor.
struct PassedFile: Sendable {
    /// The open descriptor.
    let descriptor: FileDescriptor

    /// Opens `path` read-only (close-on-exec), without waiting and without taking a terminal: `open(2)` of a FIFO
    /// waits for a writer, and a terminal opened so would become the controlling one. So it opens with `O_NONBLOCK`
    /// and `O_NOCTTY`, then turns `O_NONBLOCK` off again: the descriptor passed reads as one opened plainly would.
    /// - Throws: ``UsageError`` (exit status 64) naming the path when it cannot be opened.
    init(path: String) throws {
        do {
            let descriptor = try FileDescriptor.open(
                path,
                .readOnly,
                options: [.closeOnExec, .nonBlocking, FileDescriptor.OpenOptions(rawValue: O_NOCTTY)]
            )
            let flags = fcntl(descriptor.rawValue, F_GETFL)
            if flags >= 0 { _ = fcntl(descriptor.rawValue, F_SETFL, flags & ~O_NONBLOCK) }
            self.descriptor = descriptor
        } catch {
            throw UsageError(message: "cannot open \(path) to pass it with --fd: \(error)")
        }
    }

    /// Closes the descriptor.
    func close() {
        try? self.descriptor.close()
    }
}
