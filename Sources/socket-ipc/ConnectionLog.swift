import SocketIPC

/// The notes `serve` and `listen` print on standard error for each connection (dropped by `--quiet`).
enum ConnectionLog {
    /// `connection from uid=U gid=G pid=P (connection C)`.
    static func opened(_ id: UInt64, peer: PeerCredentials?) {
        Output.note("connection from \(peerDescription(peer)) (connection \(id))")
    }

    /// `connection closed: uid=U gid=G pid=P (connection C)`, and why when it was not an orderly close.
    static func closed(_ id: UInt64, peer: PeerCredentials?, error: SocketIPCError?) {
        let reason = error.map { ": \(SafeText.message($0.message))" } ?? ""
        Output.note("connection closed from \(peerDescription(peer)) (connection \(id))\(reason)")
    }
}
