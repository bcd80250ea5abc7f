import NIOCore

/// An error as text for a message: what `"\(error)"` gives, except for SwiftNIO's `IOError`, whose description has an
/// unbalanced parenthesis (`read(descriptor:pointer:size:): Connection reset by peer) (errno: 104)`, from
/// `reasonForError` in NIOCore's IO.swift); that becomes `read(descriptor:pointer:size:): Connection reset by peer
/// (errno 104)`, as ``SocketIPCError`` words a failed system call.
///
/// SwiftNIO's `ChannelError.ioOnClosedChannel` ("I/O on closed channel") says the connection was closed, in the
/// words this library uses for it.
package func errorText(_ error: any Error) -> String {
    if let channelError = error as? ChannelError, channelError == .ioOnClosedChannel {
        return "the connection was closed"
    }
    guard let error = error as? IOError else { return "\(error)" }
    let text = error.description
    let cause = errnoDescription(error.errnoCode)
    let unbalanced = "\(cause)) (errno: \(error.errnoCode))"
    guard text.hasSuffix(unbalanced) else { return text }
    return "\(text.dropLast(unbalanced.count))\(cause) (errno \(error.errnoCode))"
}
