extension FrameKind {
    /// The kind's name as PROTOCOL.md's frame table gives it, for error messages: "going-away", "call credit".
    package var name: String {
        switch self {
        case .message: "message"
        case .request: "request"
        case .reply: "reply"
        case .errorReply: "error reply"
        case .goAway: "going-away"
        case .callOpen: "call open"
        case .callMessage: "call message"
        case .callEnd: "call end"
        case .callCancel: "call cancel"
        case .callCredit: "call credit"
        case .ping: "ping"
        case .pong: "pong"
        case .descriptors: "descriptors"
        case .sharedPayload: "shared-payload"
        case .callBlocked: "call blocked"
        }
    }

    /// The name with its indefinite article: "a going-away", "an error reply".
    package var nameWithArticle: String {
        let name = self.name
        return (name.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + name
    }
}

extension Frame {
    /// The frame's kind byte.
    package var kind: FrameKind {
        switch self {
        case .message: .message
        case .request: .request
        case .reply: .reply
        case .errorReply: .errorReply
        case .goAway: .goAway
        case .call(_, let call): call.kind
        case .ping: .ping
        case .pong: .pong
        case .descriptors: .descriptors
        case .sharedPayload: .sharedPayload
        }
    }

    /// The frame's kind for a person, with its byte and without its contents: "a going-away frame (0x05)". Error
    /// messages, which may go to the peer, use it rather than the frame's debug description.
    package var kindDescription: String {
        let byte = String(self.kind.rawValue, radix: 16, uppercase: true)
        return "\(self.kind.nameWithArticle) frame (0x\(byte.count < 2 ? "0" + byte : byte))"
    }
}
