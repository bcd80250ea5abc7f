import SocketIPC

/// A file `send --fd` opened read-only to pass its descriptor.
struct PassedFile: Sendable {
    /// The open descriptor.
    let descriptor: FileDescriptor

    /// Opens `path` read-only (close-on-exec).
    /// - Throws: ``UsageError`` (exit status 64) naming the path when it cannot be opened.
    init(path: String) throws {
        do {
            self.descriptor = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch {
            throw UsageError(message: "cannot open \(path) to pass it with --fd: \(error)")
        }
    }

    /// Closes the descriptor.
    func close() {
        try? self.descriptor.close()
    }
}
