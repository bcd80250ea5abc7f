import Foundation
import NIOCore
import SocketIPC
import Synchronization

/// Prints the messages `listen` receives, from any connection's thread, and counts them against `--count`.
final class MessagePrinter: Sendable {
    /// How each message is printed.
    let format: MessageFormat
    /// How many messages to print before `listen` ends; `nil` for no end.
    let limit: Int?
    private let printed = Atomic<Int>(0)
    private let colored: Bool

    /// Creates a printer of `format` that stops after `limit` messages.
    init(format: MessageFormat, limit: Int?) {
        self.format = format
        self.limit = limit
        self.colored = Output.usesColor(on: STDOUT_FILENO)
    }

    /// Whether the last message of ``limit`` has been printed.
    var reachedLimit: Bool {
        guard let limit = self.limit else { return false }
        return self.printed.load(ordering: .relaxed) >= limit
    }

    /// Prints `message` on standard output, unless `limit` messages have been printed already.
    /// - Returns: Whether this was the last message to print: `listen` should end now.
    @discardableResult
    func print(_ message: ReceivedMessage) -> Bool {
        let number = self.printed.add(1, ordering: .relaxed).newValue
        if let limit = self.limit, number > limit { return false }
        Output.line(self.format.render(message, colored: self.colored))
        return number == self.limit
    }
}

/// `uid=U gid=G pid=P`, or `an unknown peer` where the kernel did not tell.
func peerDescription(_ peer: PeerCredentials?) -> String {
    guard let peer else { return "an unknown peer" }
    return "uid=\(peer.userID) gid=\(peer.groupID) pid=\(peer.processID)"
}
