import NIOCore
import SocketIPC

/// The handler of each connection of `serve --exec` (framed): runs the command for every request (its output is the
/// reply, a failure an error reply) and every one-way message (its output dropped), and notes the connection.
struct ExecHandler: ConnectionHandler {
    /// The command.
    let exec: ExecCommand
    /// Where the runs for one-way messages are kept, so that the server waits for them before it exits.
    let oneWayRuns: OneWayRuns
    /// The run for the connection's previous one-way message: the next waits for it, so that they run in order.
    private var previousOneWay: Task<Void, Never>?

    /// Creates the handler of one connection.
    init(exec: ExecCommand, oneWayRuns: OneWayRuns) {
        self.exec = exec
        self.oneWayRuns = oneWayRuns
    }

    /// Notes the connection with the peer's uid, gid and pid.
    func connectionDidOpen(_ connection: Connection) {
        ConnectionLog.opened(connection.id, peer: connection.peer)
    }

    /// Runs the command for the request in a task of the connection; its output is the reply, a failure an error reply.
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let exec = self.exec
        let peer = connection.peer
        let id = connection.id
        reply.complete {
            do {
                return try await exec.run(request, peer: peer, kind: .request)
            } catch let failure as ExecFailure {
                Output.note("exec failed for a request on connection \(id): \(failure.message)")
                throw failure
            }
        }
    }

    /// Runs the command for the message, after the connection's previous one-way message; its output is dropped.
    mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        let exec = self.exec
        let peer = connection.peer
        let id = connection.id
        let previous = self.previousOneWay
        self.previousOneWay = self.oneWayRuns.start {
            await previous?.value
            do {
                _ = try await exec.run(message, peer: peer, kind: .message, keepsOutput: false)
            } catch let failure as ExecFailure {
                Output.note("exec failed for a message on connection \(id): \(failure.message)")
            } catch {}
        }
    }

    /// Notes the close, and why when it was not orderly.
    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
    }
}
