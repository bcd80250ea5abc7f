import NIOCore
import SocketIPC

/// The handler of `serve --mode framed`: prints one-way messages, echoes requests, serves `router`'s methods, and
/// notes the connection's open and close.
///
/// Echoes of 64 KiB or more count against their user's ``unreadRepliesPerUser`` across its connections until they
/// are written to the socket (``Connection/whenDrained(_:)``); a request beyond gets an error reply instead, as
/// `--exec` counts its replies (``ExecHandler``): before, 200 connections that each sent a 16 MB request and read no
/// reply took the server to 3.2 GB.
struct PrintingEchoHandler: ConnectionHandler {
    /// The most bytes of one user's echoes not yet written to the socket: 64 MiB.
    static let unreadRepliesPerUser = 64 << 20
    /// The size from which an echo counts: 64 KiB (smaller ones are answered at once, as they come).
    static let countedSize = 64 << 10

    /// The methods served besides the echo (a ``ServiceConnectionHandler`` would refuse raw requests).
    let router: ServiceRouter
    /// What each user's large echoes not yet written hold, across the server.
    let unreadReplies: UserByteBudget

    /// Creates the handler of one connection.
    init(router: ServiceRouter, unreadReplies: UserByteBudget) {
        self.router = router
        self.unreadReplies = unreadReplies
    }

    /// Notes the connection and installs the demo service's receiver.
    func connectionDidOpen(_ connection: Connection) {
        ConnectionLog.opened(connection.id, peer: connection.peer)
        ServiceConnectionHandler(router: self.router).connectionDidOpen(connection)
    }

    /// Prints the message's size and text (or hex).
    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("message \(message.readableBytes) bytes: \(describe(message))")
    }

    /// Prints the message's size and text, and what its descriptors are (closing them).
    func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
        let described = DescriptorDescription.describingAndClosing(descriptors).map(\.text).joined(separator: "; ")
        Output.line("message \(message.readableBytes) bytes with descriptors: \(described): \(describe(message))")
    }

    /// Echoes the request; a large one only if its user's budget of echoes not yet written allows.
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        guard request.readableBytes >= Self.countedSize else {
            reply.succeed(request)
            return
        }
        let budget = self.unreadReplies
        let user = connection.peer?.userID
        guard let charge = budget.take(request.readableBytes, user: user) else {
            Output.note(
                "refused a request on connection \(connection.id): its user's echoes not yet read already hold "
                    + "\(Self.unreadRepliesPerUser >> 20) MiB"
            )
            reply.fail(
                SocketIPCError(
                    .resourceExhausted,
                    "the server already holds \(Self.unreadRepliesPerUser >> 20) MiB of this user's replies not yet "
                        + "read; try again once they are read"
                )
            )
            return
        }
        // Sent now; the echo's bytes stay the user's until they are written to the socket or the connection closes.
        reply.succeed(request)
        connection.whenDrained { budget.give(charge, user: user) }
    }

    /// Notes the close, and why when it was not orderly.
    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
    }
}
