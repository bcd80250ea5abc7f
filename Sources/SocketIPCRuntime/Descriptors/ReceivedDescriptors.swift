import CSocketIPCLinux
import SystemPackage
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// File descriptors the peer passed with a message, request or reply (`SCM_RIGHTS`), owned by the receiver.
///
/// The descriptors are new ones in this process, opened close-on-exec (`MSG_CMSG_CLOEXEC`), in the order the peer
/// passed them. Take them with ``take()`` to own them (and close them yourself); whatever is not taken is closed when
/// this value is released or ``close()`` is called, so a handler that ignores them leaks nothing.
///
/// ```swift
/// func didReceiveMessage(_ message: ByteBuffer, descriptors: ReceivedDescriptors, on connection: Connection) {
///     for descriptor in descriptors.take() {
///         defer { try? descriptor.close() }
///         // read from it, hand it on, ...
///     }
/// }
/// ```
public final class ReceivedDescriptors: Sendable {
    private let descriptors: Mutex<[Int32]>
    /// The user who passed them (the peer's uid, `nil` when unknown), whose account their closes are charged to.
    package let passedBy: UInt32?

    /// Takes ownership of `descriptors`, which the user `passedBy` passed.
    init(_ descriptors: [Int32], passedBy: UInt32?) {
        self.descriptors = Mutex(descriptors)
        self.passedBy = passedBy
    }

    /// No descriptors.
    static var none: ReceivedDescriptors { ReceivedDescriptors([], passedBy: nil) }

    /// How many descriptors are held and not yet taken.
    public var count: Int { self.descriptors.withLock { $0.filter { $0 >= 0 }.count } }

    /// Whether no descriptor is held.
    public var isEmpty: Bool { self.count == 0 }

    /// Takes the descriptors: the caller owns them from now on and must close them. A second call returns `[]`.
    public func take() -> [SystemPackage.FileDescriptor] {
        self.descriptors.withLock { held in
            defer { held = [] }
            return held.filter { $0 >= 0 }.map { SystemPackage.FileDescriptor(rawValue: $0) }
        }
    }

    /// Takes the descriptor at `index` (in the order the peer passed them): the caller owns it. `nil` when there is
    /// no such index or it was taken already. For the services layer's typed descriptors.
    package func take(at index: Int) -> Int32? {
        self.descriptors.withLock { held in
            guard held.indices.contains(index), held[index] >= 0 else { return nil }
            defer { held[index] = -1 }
            return held[index]
        }
    }

    /// Closes the descriptors not taken. Safe to call more than once.
    public func close() {
        let held = self.descriptors.withLock { held in
            defer { held = [] }
            return held
        }
        closePassedDescriptors(held.filter { $0 >= 0 }, passedBy: self.passedBy)
    }

    deinit {
        self.close()
    }
}

/// Closes each of `descriptors` (ignoring errors: each is closed, or was not open): this side's own, such as the
/// duplicates it sent.
///
/// A duplicate's close waits as the original's would: every close of a file on a FUSE file system sends it a flush,
/// not only the last. So what may wait (``csocketipc_close_may_wait``: anything but shared memory, pipes and sockets
/// other than Unix-domain ones without `SO_LINGER`) is closed on a thread of ``PassedDescriptorCloser``'s, charged to
/// this side's own accounts (``PassedDescriptorCloser/ownSockets`` for Unix-domain sockets, so that files whose
/// closes never return cannot hold them back, and ``PassedDescriptorCloser/ownDescriptors`` for the rest), never on
/// the calling thread: before, an application that forwarded a file a hostile peer served had the relay thread that
/// sent the duplicate, or the event loop that dropped it, wait for good (found by a review), and a server whose relay
/// never ended never shut down.
///
/// - Parameters:
///   - chargedTo: The account the closes that may wait are charged to, instead of this side's own: the user of the
///     peer the duplicates were sent to. A file whose close never returns then holds that user's closing threads,
///     not those of every connection: sent back (an echo) or on (a broker) to the peer that serves it, or to the
///     user it was forwarded to (found by a review: a FUSE file a peer had the server send back held this side's
///     own two threads, and every connection's senders waited with them).
///   - completion: Run once every one of `descriptors` is closed: at once if none was queued, otherwise on the
///     closing thread that closes the last.
package func closeDescriptors(
    _ descriptors: [Int32],
    chargedTo peer: UInt32?? = nil,
    then completion: (@Sendable () -> Void)? = nil
) {
    #if os(Linux)
    closeOrQueue(
        descriptors,
        account: peer ?? PassedDescriptorCloser.ownDescriptors,
        socketAccount: PassedDescriptorCloser.ownSockets,
        own: true,
        then: completion
    ) { _ = close($0) }
    #else
    for descriptor in descriptors { _ = close(descriptor) }
    completion?()
    #endif
}

/// Closes each of `descriptors`, which a peer passed (ignoring errors), turning a socket's `SO_LINGER` off first if it
/// is on with a time: the peer may have passed a TCP socket with `SO_LINGER` whose send queue cannot drain and closed
/// its own copy, and the last close of such a socket blocks the calling thread, often an event loop, for as long as
/// the peer chose. The setting is the socket's: a sender that kept its copy sees it off too. Never for this side's own
/// descriptors (the duplicates it sent), whose sockets are its application's.
///
/// Only shared memory, pipes and sockets other than Unix-domain ones without `SO_LINGER` are closed on the calling
/// thread: their closes never wait. Anything else (a Unix-domain socket, whose queue may hold descriptors in flight; a file, whose close a
/// FUSE file system served by the peer may hold for good; a device) is closed on a thread of
/// ``PassedDescriptorCloser``'s, charged to `user`, who passed them (the peer's uid, `nil` when unknown): a user
/// whose closes never return holds only its own share of those threads. Nothing here asks a file system anything
/// (``csocketipc_close_may_wait``).
package func closePassedDescriptors(_ descriptors: [Int32], passedBy user: UInt32?) {
    #if os(Linux)
    closeOrQueue(descriptors, account: user) { _ = csocketipc_close_passed($0) }
    #else
    closeDescriptors(descriptors)
    #endif
}

#if os(Linux)
/// A count shared by closures, that says when it reaches zero.
private final class Countdown: Sendable {
    private let left: Atomic<Int>
    init(_ count: Int) { self.left = Atomic(count) }
    /// Counts one down; whether that was the last.
    func countDown() -> Bool { self.left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 }
}

/// Closes with `closeNow` each of `descriptors` whose close never waits (``csocketipc_close_may_wait``), and queues the
/// others on ``PassedDescriptorCloser``'s threads, charged to `account`; with `socketAccount`, Unix-domain sockets are
/// charged to that one instead.
private func closeOrQueue(
    _ descriptors: [Int32],
    account: UInt32?,
    socketAccount: UInt32?? = nil,
    own: Bool = false,
    then completion: (@Sendable () -> Void)? = nil,
    closeNow: (Int32) -> Void
) {
    var waiting: [Int32] = []
    var sockets: [Int32] = []
    for descriptor in descriptors {
        switch csocketipc_close_may_wait(descriptor) {
        case 0: closeNow(descriptor)
        case 2 where socketAccount != nil: sockets.append(descriptor)
        default: waiting.append(descriptor)
        }
    }
    guard let completion else {
        if !waiting.isEmpty { PassedDescriptorCloser.close(waiting, passedBy: account, own: own) }
        if let socketAccount, !sockets.isEmpty { PassedDescriptorCloser.close(sockets, passedBy: socketAccount, own: own) }
        return
    }
    // Run once both queues' closes are done, whichever ends last.
    let queues = (waiting.isEmpty ? 0 : 1) + (sockets.isEmpty || socketAccount == nil ? 0 : 1)
    guard queues > 0 else {
        completion()
        return
    }
    let left = Countdown(queues)
    let once: @Sendable () -> Void = {
        if left.countDown() { completion() }
    }
    if !waiting.isEmpty { PassedDescriptorCloser.close(waiting, passedBy: account, own: own, then: once) }
    if let socketAccount, !sockets.isEmpty {
        PassedDescriptorCloser.close(sockets, passedBy: socketAccount, own: own, then: once)
    }
}
#endif
