import NIOCore

/// An error as text for a message: what `"\(error)"` gives, except for SwiftNIO's `IOError`, whose description names
/// the failed call by its Swift signature and has an unbalanced parenthesis (`read(descriptor:pointer:size:):
/// Connection reset by peer) (errno: 104)`, from `reasonForError` in NIOCore's IO.swift); that becomes `read:
/// Connection reset by peer (errno 104)`, as ``SocketIPCError`` words a failed system call (found by a review: a
/// Swift method's name reached the command line's error).
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
    return "\(systemCallName(text.dropLast(unbalanced.count)))\(cause) (errno \(error.errnoCode))"
}

/// `read: ` for `read(descriptor:pointer:size:): `: the system call's name without the Swift argument labels of the
/// function that made it; anything else as it is.
private func systemCallName(_ prefix: Substring) -> Substring {
    guard let open = prefix.firstIndex(of: "("), prefix.hasSuffix("): "),
        prefix[..<open].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }),
        prefix[prefix.index(after: open)..<prefix.index(prefix.endIndex, offsetBy: -3)].allSatisfy({
            $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":"
        })
    else { return prefix }
    return prefix[..<open] + ": "
}
