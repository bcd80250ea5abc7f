/// An error thrown by SocketIPC: a ``Code`` to match on and a message that says what happened and what to do.
///
/// ```swift
/// do {
///     try await server.run()
/// } catch let error as SocketIPCError where error.code == .addressInUse {
///     print(error.message)  // "another server is serving on /run/app.sock (its lock file ... is held)"
/// }
/// ```
public struct SocketIPCError: Error, Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure an error is. Compare with the static members, such as ``addressInUse``.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The name of the code, such as `addressInUse`.
        public var description: String { self.name }

        /// The socket path is empty, contains a NUL byte or does not fit in `sun_path`.
        public static let invalidPath = Code("invalidPath")
        /// The directory that should hold the socket file does not exist or is not a directory.
        public static let parentDirectoryMissing = Code("parentDirectoryMissing")
        /// A directory that would hold the socket file (or the runtime directory) could let another user replace
        /// it: writable by others without the sticky bit, owned by another user, or a symbolic link. Nothing was
        /// created there.
        public static let insecureDirectory = Code("insecureDirectory")
        /// Another live server is serving on the path.
        public static let addressInUse = Code("addressInUse")
        /// Something other than a socket (a file, directory or symbolic link) is at the path; it was left untouched.
        public static let pathOccupied = Code("pathOccupied")
        /// A system call failed; the message names it and its `errno`.
        public static let systemCall = Code("systemCall")
        /// Nothing is listening on the path (no file, or a stale socket file).
        public static let connectionRefused = Code("connectionRefused")
        /// The peer does not speak SocketIPC's framed protocol (its hello had the wrong magic).
        public static let notSocketIPCPeer = Code("notSocketIPCPeer")
        /// The peer speaks a protocol version this side does not.
        public static let unsupportedVersion = Code("unsupportedVersion")
        /// The peer sent bytes that break the wire protocol (unknown frame kind, truncated header).
        public static let protocolViolation = Code("protocolViolation")
        /// A frame or EOF-style message is larger than the configured maximum.
        public static let messageTooLarge = Code("messageTooLarge")
        /// The connection closed; requests in flight on it fail with this code.
        public static let connectionClosed = Code("connectionClosed")
        /// The peer announced that it is going away; no new requests are accepted on this connection.
        public static let peerGoingAway = Code("peerGoingAway")
        /// A request got no reply within its timeout.
        public static let timedOut = Code("timedOut")
        /// The peer's request handler failed; the message is the peer's description of the error.
        public static let remoteError = Code("remoteError")
        /// The peer closed the connection without acknowledging an EOF-style message.
        public static let missingAcknowledgement = Code("missingAcknowledgement")
        /// The server is not in a state that allows the operation (for example `run()` called twice).
        public static let invalidState = Code("invalidState")
        /// The peer was refused by the server's authorization policy.
        public static let unauthorized = Code("unauthorized")
        /// The server speaks the other message style: an EOF-style message reached a framed server, which answered
        /// with its hello.
        public static let wrongStyle = Code("wrongStyle")
        /// A call's deadline passed before it completed; the peer's handler was cancelled (a cancel frame with reason
        /// `deadlineExceeded`). As gRPC's `DEADLINE_EXCEEDED`.
        public static let deadlineExceeded = Code("deadlineExceeded")
        /// The peer serves no method of the called name (gRPC's `UNIMPLEMENTED`).
        public static let unknownMethod = Code("unknownMethod")
        /// The peer's handler was cancelled before it completed the call, on the peer's side (its server shut down,
        /// its connection closed). A caller cancelling its own task gets Swift's `CancellationError` instead.
        public static let cancelled = Code("cancelled")
        /// The peer could not decode the request of a call, or this side could not decode the peer's response; the
        /// message says which type failed and why.
        public static let invalidMessage = Code("invalidMessage")
        /// The peer has too many calls in progress on this connection to start another (gRPC's
        /// `RESOURCE_EXHAUSTED`); the call may be retried later. Also: the peer closed the connection because it is
        /// short of a resource itself (going-away `0x05`: it could not take the descriptors passed, out of file
        /// descriptors), or a server closed a connection whose frames would take its user over
        /// `ServerConfiguration.maximumIncomingBytesPerUser`.
        public static let resourceExhausted = Code("resourceExhausted")
        /// The peer did not answer a keepalive ping within the keepalive timeout (`ConnectionOptions.keepaliveTimeout`): it is frozen
        /// (stopped, deadlocked) or unreachable. The connection was closed.
        public static let peerNotResponding = Code("peerNotResponding")
        /// The configuration cannot be served safely or makes no sense: a file mode for an abstract socket, which has
        /// no file; a policy that admits everyone on an abstract address without saying so; an inherited descriptor
        /// that is not a listening Unix stream socket.
        public static let invalidConfiguration = Code("invalidConfiguration")
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what happened and, where it helps, what to do.
    public let message: String
    /// The socket path the error concerns, if any.
    public let path: String?
    /// The error that caused this one, kept as it was thrown (an `IOError` of SwiftNIO, a decoding error, the
    /// error a peer's handler threw), if there was one.
    public let cause: (any Error)?
    /// Where in SocketIPC (or the caller) the error was made: `Module/File.swift`, as `#fileID` gives it.
    public let file: String
    /// The line in ``file`` where the error was made.
    public let line: Int

    /// Creates an error.
    /// - Parameters:
    ///   - code: What kind of failure this is.
    ///   - message: What happened, for a person to read.
    ///   - path: The socket path the error concerns, if any.
    ///   - cause: The underlying error, if any; kept for ``cause`` and named in ``description``.
    ///   - file: Where the error is made; the caller's file by default.
    ///   - line: The line where the error is made; the caller's line by default.
    public init(
        _ code: Code,
        _ message: String,
        path: String? = nil,
        cause: (any Error)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.path = path
        self.cause = cause
        self.file = file
        self.line = line
    }

    /// `SocketIPCError.<code>: <message>`. (Messages that wrap another error already name it; ``debugDescription``
    /// adds the ``cause`` and where the error was made.)
    public var description: String { "SocketIPCError.\(self.code): \(self.message)" }

    /// ``description``, then the ``cause`` (`caused by: …`) if there is one, then where the error was made (`at
    /// Module/File.swift:line`), for logs and bug reports.
    public var debugDescription: String {
        let cause = self.cause.map { " (caused by: \(String(reflecting: $0)))" } ?? ""
        return "\(self.description)\(cause) at \(self.file):\(self.line)"
    }

    /// Two errors are equal when their ``code``, ``message`` and ``path`` are: where they were made and their
    /// ``cause`` (which need not be `Equatable`) do not count.
    public static func == (left: SocketIPCError, right: SocketIPCError) -> Bool {
        left.code == right.code && left.message == right.message && left.path == right.path
    }

    /// Hashes ``code``, ``message`` and ``path``, as ``==(_:_:)`` compares them.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.code)
        hasher.combine(self.message)
        hasher.combine(self.path)
    }
}

extension SocketIPCError {
    /// The error requests in flight fail with when their connection closed without a reason of its own.
    package static let closed = SocketIPCError(.connectionClosed, "the connection is closed")
}
