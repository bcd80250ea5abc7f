import NIOCore
import SocketIPCCore

extension CallStatus {
    /// The error a caller throws for a call that ended with this status; `nil` for ``CallStatus/Code/ok``.
    func error(codec: any MessageCodec, method: String) -> (any Error)? {
        if self.code == .ok { return nil }
        // The peer's message, escaped as it was read (PeerText) but for newlines and tabs, which an application
        // error keeps; in the library's own error messages it stays on one line.
        let oneLine = self.message.replacing("\n", with: "\\n").replacing("\t", with: "\\t")
        let text = self.message.isEmpty ? "" : ": \(oneLine)"
        switch self.code {
        case .ok:
            return nil
        case .applicationError:
            return ServiceError(
                code: self.errorCode,
                message: self.message,
                encodedDetails: self.details.readableBytes > 0 ? self.details : nil,
                codec: codec
            )
        case .unknownMethod:
            return SocketIPCError(.unknownMethod, "the peer serves no method '\(method)'")
        case .cancelled:
            return SocketIPCError(.cancelled, "the call '\(method)' was cancelled on the peer's side\(text)")
        case .deadlineExceeded:
            return SocketIPCError(.deadlineExceeded, "the call '\(method)' did not complete before its deadline\(text)")
        case .invalidMessage:
            return SocketIPCError(.invalidMessage, "the peer could not take a message of the call '\(method)'\(text)")
        case .handlerFailed:
            return SocketIPCError(.remoteError, "the handler of '\(method)' failed\(text)")
        case .unavailable:
            // A call the peer would not start, or one its shutdown ended (a stream being watched): both say so.
            return SocketIPCError(.peerGoingAway, "the call '\(method)' ended as the peer goes away\(text)")
        case .resourceExhausted:
            // Too many calls at once, too many cancelled, messages held beyond windows, or a request above its method's
            // limit: the message says which.
            return SocketIPCError(.resourceExhausted, "the peer refused the call '\(method)' for lack of resources\(text)")
        }
    }

    /// The status a handler's side sends for what the handler threw.
    static func from(_ error: any Error, codec: any MessageCodec) -> CallStatus {
        switch error {
        case let error as ServiceError:
            var details = ByteBuffer()
            var message = error.message
            if let outgoing = error.outgoingDetails {
                do {
                    details = try codec.encode(outgoing)
                } catch {
                    // Said, as details too large to send are (found by a review: they were dropped without a word).
                    message += " (its details were left out: they could not be encoded: \(error))"
                }
            } else if let encoded = error.encodedDetails {
                details = encoded
            }
            return CallStatus(code: .applicationError, errorCode: error.code, message: message, details: details)
        case is CancellationError:
            // Cancelled on this side (its server's grace period ended, its connection is closing).
            return CallStatus(code: .cancelled, message: "the handler was cancelled")
        case let error as SocketIPCError where error.code == .invalidMessage:
            return CallStatus(code: .invalidMessage, message: error.message)
        case let error as SocketIPCError where error.code == .deadlineExceeded:
            return CallStatus(code: .deadlineExceeded, message: error.message)
        case let error as SocketIPCError:
            // A failure of a call the handler made in turn: its description, as a remote error.
            return CallStatus(code: .handlerFailed, message: error.message)
        default:
            return CallStatus(code: .handlerFailed, message: String(describing: error))
        }
    }
}
