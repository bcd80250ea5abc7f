import NIOCore
import SocketIPC

/// The handler of `serve --mode framed`: prints one-way messages, echoes requests, serves `router`'s methods, and
/// notes the connection's open and close.
struct PrintingEchoHandler: ConnectionHandler {
    /// The methods served besides the echo (a ``ServiceConnectionHandler`` would refuse raw requests).
    let router: ServiceRouter

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

    /// Echoes the request.
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }

    /// Notes the close, and why when it was not orderly.
    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
    }
}
