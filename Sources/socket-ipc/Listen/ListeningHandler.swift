import NIOCore
import SocketIPC
import Synchronization

/// The handler of each connection of `listen` (framed), and of `listen --connect`'s own connection: prints every
/// message and request, answers each request with an empty reply, and notes the connection's open and close.
struct ListeningHandler: ConnectionHandler, Sendable {
    /// Prints and counts the messages.
    let printer: MessagePrinter
    /// Called once the `--count`th message has been printed (and, for a request, answered).
    let limitReached: @Sendable () -> Void
    /// What to note on standard error as the connection opens and closes.
    let notes: Notes

    /// What a ``ListeningHandler`` notes on standard error.
    enum Notes: Sendable {
        /// A server's connection: `connection from ...` and `connection closed from ...`.
        case serverConnection
        /// `listen --connect`'s own connection to the server at this path: `connected to PATH (...)` once the server's
        /// hello has come (not before a refusal), and before the first push is printed.
        case clientConnection(ConnectedNote)
    }

    /// `listen --connect`'s `connected to PATH (...)`, noted once: when the connect returns, or before the first push
    /// if that is handed out first.
    final class ConnectedNote: Sendable {
        let path: String
        private let noted = Atomic<Bool>(false)

        init(path: String) {
            self.path = path
        }

        /// Notes the connection, unless it was noted already.
        func note(_ connection: Connection) {
            guard !self.noted.exchange(true, ordering: .relaxed) else { return }
            Output.note("connected to \(self.path) (\(peerDescription(connection.peer)))")
        }
    }

    /// Notes the connection: a client's, or `--connect`'s own.
    func connectionDidOpen(_ connection: Connection) {
        switch self.notes {
        case .serverConnection:
            ConnectionLog.opened(connection.id, peer: connection.peer)
        case .clientConnection:
            // Not yet: the server's hello has not come, and it may refuse this process.
            break
        }
    }

    /// Notes `listen --connect`'s connection before its first push is printed.
    private func noteConnected(_ connection: Connection) {
        if case .clientConnection(let note) = self.notes { note.note(connection) }
    }

    /// Prints the message.
    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.noteConnected(connection)
        let received = ReceivedMessage(message, kind: .message, peer: connection.peer, connectionID: connection.id)
        if self.printer.print(received) { self.limitReached() }
    }

    /// Prints the message and what its descriptors are, and closes them.
    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        self.noteConnected(connection)
        let received = ReceivedMessage(
            message, descriptors: descriptors, kind: .message, peer: connection.peer, connectionID: connection.id)
        if self.printer.print(received) { self.limitReached() }
    }

    /// Prints the request and what its descriptors are, closes them, and answers with an empty reply.
    func didReceiveRequest(
        _ request: ByteBuffer,
        descriptors: ReceivedDescriptors,
        reply: Reply,
        on connection: Connection
    ) {
        self.noteConnected(connection)
        let received = ReceivedMessage(
            request, descriptors: descriptors, kind: .request, peer: connection.peer, connectionID: connection.id)
        let last = self.printer.print(received)
        reply.succeed(ByteBuffer())
        if last { self.limitReached() }
    }

    /// Prints the request and answers it with an empty reply.
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        self.noteConnected(connection)
        let received = ReceivedMessage(request, kind: .request, peer: connection.peer, connectionID: connection.id)
        let last = self.printer.print(received)
        // Answered before `listen` may end, so that the requester never waits in vain.
        reply.succeed(ByteBuffer())
        if last { self.limitReached() }
    }

    /// Notes a server connection's close.
    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        if case .serverConnection = self.notes {
            ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
        }
    }
}
