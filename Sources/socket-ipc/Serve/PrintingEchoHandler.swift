import NIOCore
import SocketIPC

/// The handler of `serve --mode framed`: prints one-way messages, echoes requests, serves `router`'s methods, and
/// notes the connection's open and close.
struct PrintingEchoHandler: ConnectionHandler {
    /// The methods served besides the echo (a ``ServiceConnectionHandler`` would refuse raw requests).
    let router: ServiceRouter

    func connectionDidOpen(_ connection: Connection) {
        ConnectionLog.opened(connection.id, peer: connection.peer)
        ServiceConnectionHandler(router: self.router).connectionDidOpen(connection)
    }

    func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        Output.line("message \(message.readableBytes) bytes: \(describe(message))")
    }

    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }

    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
    }
}
