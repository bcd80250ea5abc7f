import NIOCore
import SocketIPC
import Synchronization

/// The handler of each connection of `serve --exec` (framed): runs the command for every request (its output is the
/// reply, a failure an error reply) and every one-way message (its output dropped), and notes the connection.
///
/// A request's run is a task of the connection, so it is cancelled when the connection closes, also while it still
/// waits for its turn (``ExecTurns``); the connection reads nothing more while its maximum of unanswered requests is
/// reached. One-way messages run in order, one after another, and outlive their connection (a client may send one and
/// close at once); at most ``maximumPendingMessages`` of a connection are kept, with their payloads, and a connection
/// that sends more while they are all pending is closed.
struct ExecHandler: ConnectionHandler {
    /// The most one-way messages of one connection queued or running at once.
    static let maximumPendingMessages = 16

    /// The command.
    let exec: ExecCommand
    /// Where the runs for one-way messages are kept, so that the server's shutdown can end them.
    let oneWayRuns: OneWayRuns
    /// What each user's requests waiting or running and replies not yet read hold, across the server
    /// (``requestBytesPerUser``).
    let requestBytes: UserByteBudget
    /// The most bytes one user's requests may hold while they wait for their turn or run, with the replies its peers
    /// have not read yet, across all its connections: 64 MiB, each request counted as at least 4 KiB, as one-way
    /// messages (``OneWayRuns``). A request beyond it is answered at once with an error reply, and the connection
    /// goes on.
    static let requestBytesPerUser = OneWayRuns.maximumBytesPerUser
    /// The connection's one-way messages queued or running.
    private let pendingMessages = PendingCount()
    /// The run for the connection's previous one-way message: the next waits for it, so that they run in order.
    private var previousOneWay: Task<Void, Never>?
    /// Whether the connection was closed for sending too many one-way messages; what it still sends is dropped.
    private var isOverwhelmed = false

    /// Creates the handler of one connection.
    init(exec: ExecCommand, oneWayRuns: OneWayRuns, requestBytes: UserByteBudget) {
        self.exec = exec
        self.oneWayRuns = oneWayRuns
        self.requestBytes = requestBytes
    }

    /// Notes the connection with the peer's uid, gid and pid.
    func connectionDidOpen(_ connection: Connection) {
        ConnectionLog.opened(connection.id, peer: connection.peer)
    }

    /// Runs the command for the request in a task of the connection; its output is the reply, a failure an error reply.
    ///
    /// The request is charged to its user's ``requestBytes`` while it waits and runs, and the reply from when it is
    /// sent until all of it has been written to the socket (the kernel holds it for the peer) or the connection
    /// closes (``Connection/whenDrained(_:)``): a peer that sends requests and reads no reply cannot make the server hold more than its user's budget
    /// of replies (before, 3 connections of 100 requests each, answered with 16 MB and never read, took the server to
    /// 2.9 GB in 24 s; and a first version, which held the charge only until the write queue was below its 2 MiB
    /// watermark, let 1,000 connections each keep a reply of 4 MB unread, 3.7 GB). A request that comes while its user's budget is spent, or
    /// whose turn comes while replies not yet read hold more (a reply is counted whatever its size, since its
    /// command has already run), gets an error reply instead, and its command never runs.
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        let exec = self.exec
        let peer = connection.peer
        let id = connection.id
        let budget = self.requestBytes
        let user = peer?.userID
        guard let charge = budget.take(request.readableBytes, user: user) else {
            Self.noteRefusal(on: id)
            reply.fail(Self.budgetSpent)
            return
        }
        reply.complete {
            let output: ByteBuffer
            do {
                defer { budget.give(charge, user: user) }
                output = try await exec.run(request, peer: peer, kind: .request) { !budget.isOver(user: user) }
            } catch let failure as ExecFailure {
                Output.note("exec failed for a request on connection \(id): \(failure.message)")
                throw failure
            } catch is CancellationError where !Task.isCancelled {
                Self.noteRefusal(on: id)
                throw Self.budgetSpent
            }
            // Sent now; the reply's bytes stay the user's until they are written to the socket.
            let held = budget.charge(output.readableBytes, user: user)
            reply.succeed(output)
            connection.whenDrained { budget.give(held, user: user) }
            return output  // already answered: not sent again
        }
    }

    private static func noteRefusal(on connection: UInt64) {
        Output.note(
            "refused a request on connection \(connection): its user's requests for --exec and replies not yet read "
                + "already hold \(Self.requestBytesPerUser >> 20) MiB"
        )
    }

    /// The error reply to a request whose user's budget is spent.
    private static let budgetSpent = ExecFailure(
        message: "the server already holds \(Self.requestBytesPerUser >> 20) MiB of this user's requests waiting for "
            + "their turn and replies not yet read; try again once they are answered and read"
    )

    /// Runs the command for the message, after the connection's previous one-way message; its output is dropped.
    /// Closes the connection instead when ``maximumPendingMessages`` of its messages are pending.
    mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        let id = connection.id
        guard !self.isOverwhelmed else { return }
        guard self.pendingMessages.value.load(ordering: .relaxed) < Self.maximumPendingMessages else {
            self.isOverwhelmed = true
            Output.note(
                "closing connection \(id): it sent more one-way messages than --exec keeps waiting "
                    + "(\(Self.maximumPendingMessages)); the message was dropped"
            )
            connection.close()
            return
        }
        let exec = self.exec
        let peer = connection.peer
        // Kept until the command runs: a copy, not a slice that keeps the whole read buffer (up to 1 MiB) alive.
        let message = ByteBuffer(bytes: message.readableBytesView)
        let previous = self.previousOneWay
        let pending = self.pendingMessages
        pending.value.add(1, ordering: .relaxed)
        let run: Task<Void, Never>
        do throws(OneWayRuns.Refusal) {
            run = try self.oneWayRuns.start(bytes: message.readableBytes, user: peer?.userID) { mayStart in
                defer { pending.value.subtract(1, ordering: .relaxed) }
                await previous?.value
                do {
                    _ = try await exec.run(message, peer: peer, kind: .message, keepsOutput: false, mayStart: mayStart)
                } catch let failure as ExecFailure {
                    Output.note("exec failed for a message on connection \(id): \(failure.message)")
                } catch {}
            }
        } catch {
            pending.value.subtract(1, ordering: .relaxed)
            guard case .userBudgetSpent = error else {
                Output.note("dropped a one-way message on connection \(id): the server is shutting down")
                return
            }
            self.isOverwhelmed = true
            Output.note(
                "closing connection \(id): its user's one-way messages waiting for --exec already hold "
                    + "\(OneWayRuns.maximumBytesPerUser >> 20) MiB; the message was dropped"
            )
            connection.close()
            return
        }
        self.previousOneWay = run
    }

    /// Notes the close, and why when it was not orderly.
    func connectionDidClose(_ connection: Connection, error: SocketIPCError?) {
        ConnectionLog.closed(connection.id, peer: connection.peer, error: error)
    }
}

/// A count shared by a handler and the tasks it starts.
private final class PendingCount: Sendable {
    let value = Atomic<Int>(0)
}
