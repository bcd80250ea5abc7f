import Logging
import SocketIPC
import UnixSignals

/// `listen --connect`: a framed client that prints what its server pushes until the server closes the connection,
/// the `--count`th message, or SIGINT or SIGTERM.
struct PushListener {
    /// The server's socket path.
    let path: String
    /// Limits and timeouts of the connection.
    let configuration: ClientConfiguration
    /// Prints and counts the messages.
    let printer: MessagePrinter
    /// Where the connection logs.
    let logger: Logger

    /// Why the listening ended.
    private enum Ending: Sendable {
        case closedByServer
        case limitReached
        case signal
    }

    /// Connects, prints, and returns when done.
    /// - Throws: What connecting throws; the reason the connection was lost (`connectionClosed`: exit status 3) when
    ///   the server closed it without going away.
    func run() async throws {
        // Trapped before connecting, so that a signal during the connect ends the command cleanly too.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let (limit, limitReached) = AsyncStream.makeStream(of: Void.self)
        let connected = ListeningHandler.ConnectedNote(path: self.path)
        let handler = ListeningHandler(
            printer: self.printer,
            limitReached: { limitReached.finish() },
            notes: .clientConnection(connected)
        )
        let connection = try await Client.connect(
            to: self.path, configuration: self.configuration, handler: handler, logger: self.logger)
        // The server's hello came and it did not refuse this process (a refusal fails the connect).
        connected.note(connection)
        let ending = await withTaskGroup(of: Ending.self) { group in
            group.addTask {
                await connection.waitUntilClosed()
                return .closedByServer
            }
            group.addTask {
                for await _ in limit {}
                return .limitReached
            }
            group.addTask {
                var signals = signals.makeAsyncIterator()
                if await signals.next() != nil { ForcedExit.arm() }
                return .signal
            }
            let first = await group.next() ?? .closedByServer
            group.cancelAll()
            if case .closedByServer = first {} else { connection.close() }
            return first
        }
        guard case .closedByServer = ending else { return }
        guard let reason = connection.closeReason else { return }
        if reason.code == .peerGoingAway {
            Output.note("the server went away: \(SafeText.message(reason.message))")
            return
        }
        throw reason
    }
}
