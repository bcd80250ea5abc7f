/// An error thrown by SocketIPC: a ``Code`` to match on and a message that says what happened and what to do.
///
/// ```swift
/// do {
///     try await server.run()
/// } catch let error as SocketIPCError where error.code == .addressInUse {
///     print(error.message)  // "another server is serving on /run/app.sock (its lock file ... is held)"
/// }
/// ```
public struct SocketIPCError: Error, Hashable, Sendable, CustomStringConvertible {
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
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what happened and, where it helps, what to do.
    public let message: String
    /// The socket path the error concerns, if any.
    public let path: String?

    /// Creates an error.
    /// - Parameters:
    ///   - code: What kind of failure this is.
    ///   - message: What happened, for a person to read.
    ///   - path: The socket path the error concerns, if any.
    public init(_ code: Code, _ message: String, path: String? = nil) {
        self.code = code
        self.message = message
        self.path = path
    }

    /// `SocketIPCError.<code>: <message>`.
    public var description: String { "SocketIPCError.\(self.code): \(self.message)" }
}

extension SocketIPCError {
    static func systemCall(_ name: String, errno code: Int32, path: String? = nil) -> SocketIPCError {
        let subject = path.map { " on \($0)" } ?? ""
        return SocketIPCError(.systemCall, "\(name)\(subject) failed: \(errnoDescription(code)) (errno \(code))", path: path)
    }

    static let closed = SocketIPCError(.connectionClosed, "the connection is closed")
}
