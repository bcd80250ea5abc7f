extension SocketIPCError {
    /// What an error means for the caller, in a few broad kinds: whether anyone is there, whether the peer refused or
    /// failed the call, whether the connection was lost, whether this side is at fault. Each ``Code`` belongs to one.
    ///
    /// ```swift
    /// do {
    ///     reply = try await connection.request(payload)
    /// } catch let error as SocketIPCError where error.category == .unreachable {
    ///     // No server there now: start it, or try again later.
    /// }
    /// ```
    public enum Category: Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// No server is there now: nothing listens on the path (`connectionRefused`), or its directory does not exist
        /// (`parentDirectoryMissing`). A later attempt may find one.
        case unreachable
        /// The peer announced that it is going away (`peerGoingAway`): it takes nothing new on this connection; a
        /// new connection (to its successor, once it runs) may.
        case peerShuttingDown
        /// The peer refused this side: its authorization policy does not admit this process (`unauthorized`).
        /// Trying again changes nothing.
        case refused
        /// The connection was lost before the call completed: closed (`connectionClosed`), the peer frozen
        /// (`peerNotResponding`), or gone without acknowledging an EOF-style message (`missingAcknowledgement`).
        /// Whether the peer acted on what was sent is unknown.
        case connectionLost
        /// The two sides do not speak the same protocol: not a SocketIPC peer (`notSocketIPCPeer`), another protocol
        /// version (`unsupportedVersion`), broken framing (`protocolViolation`), or the other message style
        /// (`wrongStyle`).
        case protocolMismatch
        /// Time ran out: a request got no reply in time (`timedOut`), or a call's deadline passed
        /// (`deadlineExceeded`).
        case timedOut
        /// The peer answered, with a failure: its handler threw (`remoteError`), it serves no such method
        /// (`unknownMethod`), it could not decode the message (`invalidMessage`), its handler was cancelled on its
        /// side (`cancelled`), or it has too many calls in progress (`resourceExhausted`).
        case remote
        /// Something on this side: the path (`invalidPath`, `insecureDirectory`, `pathOccupied`, `addressInUse`), a
        /// system call (`systemCall`), a message over the size limit (`messageTooLarge`), or an operation the object's
        /// state does not allow (`invalidState`).
        case local

        /// The case's name, such as `unreachable`.
        public var description: String {
            switch self {
            case .unreachable: "unreachable"
            case .peerShuttingDown: "peerShuttingDown"
            case .refused: "refused"
            case .connectionLost: "connectionLost"
            case .protocolMismatch: "protocolMismatch"
            case .timedOut: "timedOut"
            case .remote: "remote"
            case .local: "local"
            }
        }
    }

    /// The kind of failure this error is, from its ``code``; see ``Category`` for which code belongs where.
    public var category: Category {
        Self.category(of: self.code)
    }

    /// Whether a later attempt (after a delay, possibly on a new connection) may succeed where this one failed: for
    /// the categories ``Category/unreachable``, ``Category/peerShuttingDown`` and ``Category/connectionLost``, and for
    /// the code `resourceExhausted` (the peer had too many calls in progress).
    ///
    /// It says nothing about whether the operation may be repeated safely: after ``Category/connectionLost`` the
    /// peer may have acted on a request before the connection was lost, so only an operation that is safe to repeat
    /// (idempotent) should be retried. That is the caller's to know. Retry with a delay that grows, not in a tight
    /// loop.
    public var isRetryable: Bool {
        switch self.category {
        case .unreachable, .peerShuttingDown, .connectionLost:
            return true
        case .remote:
            return self.code == .resourceExhausted
        case .refused, .protocolMismatch, .timedOut, .local:
            return false
        }
    }

    /// The category of `code`. Every code is listed (the tests check each against a table of all the codes that
    /// SocketIPCError.swift declares); one without a category here would count as ``Category/local``.
    private static func category(of code: Code) -> Category {
        switch code {
        case .connectionRefused, .parentDirectoryMissing:
            return .unreachable
        case .peerGoingAway:
            return .peerShuttingDown
        case .unauthorized:
            return .refused
        case .connectionClosed, .peerNotResponding, .missingAcknowledgement:
            return .connectionLost
        case .notSocketIPCPeer, .unsupportedVersion, .protocolViolation, .wrongStyle:
            return .protocolMismatch
        case .timedOut, .deadlineExceeded:
            return .timedOut
        case .remoteError, .unknownMethod, .invalidMessage, .cancelled, .resourceExhausted:
            return .remote
        case .invalidPath, .insecureDirectory, .addressInUse, .pathOccupied, .systemCall, .messageTooLarge,
            .invalidState, .invalidConfiguration:
            return .local
        default:
            return .local
        }
    }
}
