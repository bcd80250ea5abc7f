import NIOCore
import SocketIPC

/// The handler of `serve --mode eof --exec`: runs the command for each message, its output the acknowledgement.
///
/// One user's messages and acknowledgements are counted across all of its connections (``bytesPerUser``), as the
/// framed `--exec` counts requests (``ExecHandler``): a message that waits for its turn or runs, and an
/// acknowledgement until its client has read it or the connection closed. A message that comes while they hold it
/// all, or whose turn comes while they hold more (acknowledgements are counted whatever their size, since the
/// command has already run), closes its connection without an acknowledgement, and its command is never run.
/// Before, 150 connections of 4 MiB, read slowly, took a server to 699 MB.
struct EOFExecHandler: Sendable {
    /// The most bytes one user's messages and unread acknowledgements may hold: 64 MiB, each message counted as at
    /// least 4 KiB, as the framed requests' ``ExecHandler/requestBytesPerUser``.
    static let bytesPerUser = ExecHandler.requestBytesPerUser

    /// The command.
    let exec: ExecCommand
    /// What each user's messages and acknowledgements hold, across the server.
    private let budget = UserByteBudget(limit: Self.bytesPerUser, minimum: OneWayRuns.minimumBytesPerRun)

    /// Creates the handler of a server.
    init(exec: ExecCommand) {
        self.exec = exec
    }

    /// Runs the command for `message` once its user's budget allows, and charges the output until the connection
    /// closes.
    /// - Returns: The command's output; `nil` (close without an acknowledgement) when the user's budget is spent.
    /// - Throws: ``ExecFailure`` when the command fails; `CancellationError` when the server's shutdown ends the run.
    func handle(_ message: ByteBuffer, context: EOFMessageContext) async throws -> ByteBuffer? {
        ConnectionLog.opened(context.connectionID, peer: context.peer)
        let user = context.peer?.userID
        let budget = self.budget
        guard let charge = budget.take(message.readableBytes, user: user) else {
            Self.noteRefusal(context.connectionID)
            return nil
        }
        let acknowledgement: ByteBuffer
        do {
            defer { budget.give(charge, user: user) }
            acknowledgement = try await self.exec.run(message, peer: context.peer, kind: .eof) {
                !budget.isOver(user: user)
            }
        } catch let failure as ExecFailure {
            Output.note("exec failed for connection \(context.connectionID): \(failure.message)")
            throw failure
        } catch is CancellationError where !Task.isCancelled {
            // Its turn came while the user's acknowledgements held more than the budget.
            Self.noteRefusal(context.connectionID)
            return nil
        }
        let held = budget.charge(acknowledgement.readableBytes, user: user)
        if let closed = context.closed {
            closed.whenComplete { _ in budget.give(held, user: user) }
        } else {
            budget.give(held, user: user)
        }
        return acknowledgement
    }

    private static func noteRefusal(_ connectionID: UInt64) {
        Output.note(
            "closing connection \(connectionID) without an acknowledgement: its user's messages for --exec and "
                + "acknowledgements not yet read already hold \(Self.bytesPerUser >> 20) MiB"
        )
    }
}
