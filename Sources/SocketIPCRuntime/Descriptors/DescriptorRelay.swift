import CSocketIPCLinux
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SocketIPCCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Carries the bytes of a connection that passes file descriptors between its socket and the socket pair its channel
/// reads and writes, with the descriptors that travel along (`SCM_RIGHTS`).
///
/// SwiftNIO's stream channels read with `read(2)`, which makes the kernel drop (close) the descriptors a peer passed,
/// and read on their own when the peer closes; so such a connection's channel never sees its socket. Two threads of
/// the relay do, each blocking in one direction:
///
/// ```
///  peer ──socket── [in: recvmsg, MSG_CMSG_CLOEXEC] ──pair── channel (NIO, the usual pipeline)
///       ◀──────── [out: sendmsg, SCM_RIGHTS at each 0x0D frame] ◀──
/// ```
///
/// - **In**: each `recvmsg` takes the descriptors that came with its bytes; a ``DescriptorFrameScanner`` finds the
///   descriptors frames (`0x0D`), and at each one's last byte the relay moves the count it announces from the
///   descriptors received to the groups the channel handler takes (``takeClaimed()``), before the bytes go on to the
///   channel. A peer that passes descriptors without announcing them, more than the maximum, or control data of
///   another kind breaks the protocol: the relay closes what it holds and fails the channel with
///   `protocolViolation`. Control data the kernel truncated (`MSG_CTRUNC`) is this side's shortage (out of
///   descriptors), since the buffer holds all one `recvmsg` can bring: the channel fails with `resourceExhausted`,
///   and the peer gets going-away `0x05` that says so.
/// - **Out**: the connection registers each group it sends (``registerOutgoing(_:)``) before it writes the frame's
///   bytes; the relay attaches the next group to the first byte of each descriptors frame it forwards, and closes
///   its copies once the kernel took them.
///
/// Memory stays bounded: one 64 KiB buffer each way, the socket pair's buffers, and at most ``inFlightLimit``
/// received descriptors; past that the relay reads nothing more until the handler took some, so the kernel pushes
/// back on the peer. It also reads nothing while the peer's user has ``PassedDescriptorCloser/maximumWaitingPerUser``
/// closes of descriptors it passed waiting (a file system it serves that never answers a flush): those are open
/// descriptors too. As one `recvmsg` may bring 253 of them whatever the bound, the inbound thread waits for the peer
/// with `poll(2)` and reads without blocking (`MSG_DONTWAIT`), and only while fewer than
/// ``PassedDescriptorCloser/maximumReadsPerUser`` of the user's connections read
/// (``PassedDescriptorCloser/beginRead(_:of:)``). Each such connection costs two threads; descriptor passing is off
/// unless ``ConnectionOptions/maximumDescriptorsPerMessage`` is set.
final class DescriptorRelay: @unchecked Sendable {
    /// The channel's end of the socket pair, for `ClientBootstrap.withConnectedSocket`; the channel owns it.
    let channelSide: Int32
    /// The connection's socket; the relay owns it and closes it once both threads ended.
    let socket: Int32
    /// The relay's end of the socket pair.
    private let relaySide: Int32
    /// The most descriptors one message may carry.
    let maximumPerMessage: Int
    /// The peer's user (`SO_PEERCRED`'s uid; `nil` when unknown), whose account the closes of what it passed are
    /// charged to (``PassedDescriptorCloser``).
    let passedBy: UInt32?
    /// The most descriptors received and not yet taken by the channel handler before the relay stops reading.
    let inFlightLimit: Int
    /// Where the inbound thread says why a `recvmsg` ended the stream.
    private let logger: Logger
    /// Guards everything below; its value is 1 while the inbound thread may receive, 0 while it waits.
    private let lock = ConditionLock(value: 1)
    private var unclaimed: [Int32] = []
    private var claimed: [[Int32]] = []
    private var claimedCount = 0
    /// Descriptors the channel handler took and holds for frames it keeps while paused for requests
    /// (``takeClaimed(holding:)``): still in flight, counted against ``inFlightLimit`` until released.
    private var heldCount = 0
    /// How many descriptors have moved on so far: claimed by a descriptors frame, then taken by the channel handler
    /// (``pendingDescriptors()``).
    private var movedOn: UInt64 = 0
    private var outgoing: [[Int32]] = []
    /// How many descriptors ``outgoing`` holds: registered, not yet sent.
    private var outgoingCount = 0
    private var isClosed = false
    private var socketIsClosed = false
    /// Whether the outbound thread has stopped sending (the channel closed its end, or the peer is gone): nothing
    /// registered from now on is ever sent.
    private var outboundEnded = false
    /// Whether the socket is kept, once both threads ended, while the peer has not read shared payloads sent to it
    /// (``lingersWhilePeerHoldsSharedMemory``), until ``stopLingering()``.
    private var lingeringStopped = false
    /// Whether the last thread keeps the socket (and with it, since the relay has not finished, the connection's
    /// slot on a server) while the peer has left shared payloads unread in it: their memory stays in flight in the
    /// peer's receive queue whatever this side does, so a server that freed the slot would let one user pin a
    /// connection's worth of shared memory per connection it ever made (found by a review: 640 MiB through 40
    /// connections closed one after another against a limit of 4 per user).
    let lingersWhilePeerHoldsSharedMemory: Bool
    private var threadsRunning = 2
    /// Bytes of shared memory this side made for its payloads since the peer last had read everything sent to it
    /// (``reserveSharedMemory(_:limit:)``).
    private var sharedUnread = 0
    /// Whether the outbound thread holds bytes it read from the pair and has not sent yet.
    private var outboundBusy = false
    private var channel: (any Channel)?
    private var violation: RelayViolation?
    /// Whether the inbound thread waits because the peer's user is paused (logged once each time it starts).
    private var waitsForUsersCloses = false
    /// How many of the descriptors received and not yet taken this relay has counted on its peer's user's account
    /// (``unlockAccounting(withValue:closing:)``); 0 once the channel closed, when what it holds is closed.
    private var accounted = 0
    /// Who waits for both threads to end (``waitUntilFinished()``); `nil` once they have.
    private let finishWaiters = Mutex<[@Sendable () -> Void]?>([])

    /// Makes the socket pair and starts the threads.
    /// - Parameters:
    ///   - socket: The connection's socket, which the relay now owns (also when this throws).
    ///   - maximumPerMessage: The most descriptors one message may carry, 1 to 253.
    ///   - passedBy: The peer's user id (`SO_PEERCRED`), `nil` when unknown: the closes of the descriptors it passes
    ///     are charged to it.
    ///   - logger: The connection's logger.
    ///   - lingersWhilePeerHoldsSharedMemory: Whether to keep the socket, once the connection is over, while the
    ///     peer has left shared payloads unread in it (a server's relay, whose slot is held meanwhile); default
    ///     `false`.
    /// - Throws: `SocketIPCError` with code `systemCall` when the socket pair or a thread cannot be made.
    init(
        socket: Int32,
        maximumPerMessage: Int,
        passedBy: UInt32?,
        logger: Logger,
        lingersWhilePeerHoldsSharedMemory: Bool = false
    ) throws {
        self.lingersWhilePeerHoldsSharedMemory = lingersWhilePeerHoldsSharedMemory
        #if !os(Linux)
        // Untested: Darwin has SCM_RIGHTS too, but not MSG_CMSG_CLOEXEC or MSG_NOSIGNAL; not done yet.
        _ = close(socket)
        throw SocketIPCError(.invalidConfiguration, "descriptor passing is available on Linux only")
        #endif
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, systemSocketStream | systemSocketCloseOnExec, 0, &pair) == 0 else {
            let code = errno
            _ = close(socket)
            throw SocketIPCError.systemCall("socketpair", errno: code)
        }
        self.socket = socket
        self.channelSide = pair[0]
        self.relaySide = pair[1]
        self.maximumPerMessage = maximumPerMessage
        self.passedBy = passedBy
        self.inFlightLimit = Self.inFlightLimit(maximumPerMessage: maximumPerMessage)
        self.logger = logger
        // The threads block; the channel's end stays as NIO makes it (non-blocking).
        for descriptor in [socket, pair[1]] {
            let flags = fcntl(descriptor, F_GETFL)
            _ = fcntl(descriptor, F_SETFL, flags & ~O_NONBLOCK)
        }
        // Until both threads end (``threadEnded()``, also when one cannot start).
        PassedDescriptorCloser.add(self, of: passedBy)
        do {
            try DetachedThread.start(name: "sipc-relay", stackSize: 128 * 1024) { [self] in self.runInbound() }
        } catch {
            self.lock.lock()
            self.threadsRunning = 1
            self.isClosed = true
            self.lock.unlock()
            _ = close(pair[0])  // never handed to a channel
            _ = shutdown(socket, Int32(SHUT_RDWR))
            _ = shutdown(pair[1], Int32(SHUT_RDWR))
            self.threadEnded()
            throw error
        }
        do {
            try DetachedThread.start(name: "sipc-relay", stackSize: 128 * 1024) { [self] in self.runOutbound() }
        } catch {
            // Never handed to a channel, which would close it: what the inbound thread received is closed, and it
            // reads no more (found by a review: a group it claimed stayed open, and counted on its user's account).
            self.abort()
            _ = close(pair[0])
            _ = shutdown(socket, Int32(SHUT_RDWR))
            _ = shutdown(pair[1], Int32(SHUT_RDWR))
            self.threadEnded()
            throw error
        }
        // Only now may the peer pass descriptors: both threads run, and the inbound one reads everything the socket
        // brings with recvmsg(2). Until here the socket refused them (SocketConnector's sockets, and the server's
        // listeners, refuse them from the start), so no failure before could leave one queued for a plain close to
        // drop in the caller's thread (a review: a server that turned passing on at the accept had its event loops
        // held by a parked peer's lingering sockets).
        setDescriptorPassing(true, on: socket)
    }

    /// The most descriptors a relay holds received and not yet handed out: 4 messages' worth, at least 64.
    static func inFlightLimit(maximumPerMessage: Int) -> Int { max(4 * maximumPerMessage, 64) }

    /// How many descriptors this side may have queued to send on one connection and not sent yet before a sender
    /// that can wait (`Connection.send(_:descriptors:)`) waits for the relay to send some: 1,024 (the soft
    /// `RLIMIT_NOFILE` of a default Linux session), or 4 messages' worth if more. They stay in this process's table of
    /// descriptors until the peer's socket takes them, and each message that carries one weighs a few bytes against
    /// the write watermark, which alone never made a sender wait. A sender that cannot wait (a reply) may take the
    /// queue to twice this; beyond, it is refused (``admitOutgoing(_:)``): a peer that asked for replies carrying
    /// descriptors and read none made a server duplicate 19,970 of them in a second, and every other peer was
    /// refused (found by a review). Descriptors stay counted until closed after they were sent. D-Bus bounds the same
    /// (`max_outgoing_unix_fds`). See ``OutgoingDescriptorAccounts``.
    static func maximumOutgoing(maximumPerMessage: Int) -> Int { max(1024, 4 * maximumPerMessage) }

    /// This connection in ``OutgoingDescriptorAccounts``.
    private var accountID: ObjectIdentifier { ObjectIdentifier(self) }

    /// Whether the relay sends nothing more. Called with the lock held.
    private var stoppedSending: Bool { self.isClosed || self.outboundEnded || self.socketIsClosed }

    /// Room for `count` descriptors for a sender that cannot wait (a reply): within twice
    /// ``maximumOutgoing(maximumPerMessage:)`` on the connection, and
    /// ``OutgoingDescriptorAccounts/refusingBoundPerUser`` across the peer's user's connections. Beyond, the error
    /// for the sender (`resourceExhausted`): the peer reads what it is sent too slowly, or not at all, and the
    /// descriptors are not duplicated. The connection stays open: a burst of replies to a peer that reads them is
    /// not its fault. Taken before the descriptors are duplicated.
    func admitOutgoing(_ count: Int) -> Result<OutgoingDescriptorReservation, SocketIPCError> {
        let limit = 2 * Self.maximumOutgoing(maximumPerMessage: self.maximumPerMessage)
        guard count > 0,
            let (pending, ofUser) = OutgoingDescriptorAccounts.admit(
                count, connection: self.accountID, user: self.passedBy, refusingBound: limit
            )
        else {
            return .success(OutgoingDescriptorReservation(count: max(count, 0), relay: self, user: self.passedBy))
        }
        let text: String
        if pending + count > limit {
            text = "\(pending) descriptors wait to be sent to the peer, and \(count) more would pass the bound of \(limit)"
        } else {
            text = "\(ofUser) descriptors wait to be sent to the peer's user's connections, and \(count) more would pass "
                + "the bound of \(OutgoingDescriptorAccounts.refusingBoundPerUser)"
        }
        return .failure(SocketIPCError(.resourceExhausted, text + ": the peer reads slowly, or not at all"))
    }

    /// Room for `count` descriptors for a sender that can wait: waits while the connection has
    /// ``maximumOutgoing(maximumPerMessage:)`` counted, or the peer's user
    /// ``OutgoingDescriptorAccounts/waitingBoundPerUser`` (unless nothing is counted there), until the relay has
    /// sent enough of them; in the order the connection's senders came. Once the relay stops sending, at once, with
    /// nothing counted (the send that follows fails as the connection does).
    /// - Throws: `CancellationError` when the task is cancelled meanwhile.
    func reserveOutgoing(_ count: Int) async throws -> OutgoingDescriptorReservation {
        let bound = Self.maximumOutgoing(maximumPerMessage: self.maximumPerMessage)
        let number = Atomic<UInt64>(.max)
        let counted = try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Bool, any Error>) in
                // Under the relay's lock, so that the relay cannot stop between the look and the wait.
                self.lock.lock()
                guard !self.stoppedSending else {
                    self.lock.unlock(withValue: self.mayReceiveValue)
                    continuation.resume(returning: false)
                    return
                }
                let reserved = OutgoingDescriptorAccounts.reserve(
                    count, connection: self.accountID, user: self.passedBy, bound: bound, continuation: continuation
                )
                self.lock.unlock(withValue: self.mayReceiveValue)
                switch reserved {
                case .counted:
                    continuation.resume(returning: true)
                case .waiting(let id):
                    number.store(id, ordering: .releasing)
                    // Cancelled before the number was there to find: give up now.
                    if Task.isCancelled { Self.cancelOutgoingWait(id) }
                }
            }
        } onCancel: {
            let id = number.load(ordering: .acquiring)
            if id != .max { Self.cancelOutgoingWait(id) }
        }
        return OutgoingDescriptorReservation(count: counted ? count : 0, relay: self, user: self.passedBy)
    }

    private static func cancelOutgoingWait(_ number: UInt64) {
        let (cancelled, admitted) = OutgoingDescriptorAccounts.cancel(number)
        cancelled?.resume(throwing: CancellationError())
        OutgoingDescriptorAccounts.resume(admitted: admitted)
    }

    /// Closes descriptors the relay took to send (sent, or dropped with the connection), and counts them no more
    /// among those committed to send once they are closed: a close may be queued on a closing thread (a device, a
    /// file a FUSE file system serves), and so counted, a sender waits rather than queue closes without end (found by
    /// a review's test: eight senders of `/dev/null` queued 19,000 of them). Such closes are charged to the peer's
    /// user, so that a file whose close never returns, sent to it, holds up only the senders to that user (found by a
    /// review: charged to this side's own account, a FUSE file a peer had sent back held every connection's).
    private func closeSent(_ group: [Int32]) {
        guard !group.isEmpty else { return }
        let connection = self.accountID
        let user = self.passedBy
        closeDescriptors(group, chargedTo: .some(self.passedBy)) {
            // Holds the relay, so that its identity is not another's until it is uncounted.
            withExtendedLifetime(self) {
                OutgoingDescriptorAccounts.resume(
                    admitted: OutgoingDescriptorAccounts.remove(group.count, connection: connection, user: user)
                )
            }
        }
    }

    // MARK: - The channel handler's side (any thread)

    /// The channel the relay fails when the peer breaks the protocol; set once the channel exists.
    func attach(_ channel: any Channel) {
        self.lock.lock()
        self.channel = channel
        let violation = self.violation
        self.lock.unlock(withValue: self.mayReceiveValue)
        if let violation { Self.fail(channel, with: violation) }
    }

    /// Takes the descriptors of the next descriptors frame the channel handler decoded; the caller owns them.
    /// - Parameter holding: Whether the handler keeps them for a frame it holds while paused for requests: they still
    ///   count against ``inFlightLimit`` until ``releaseHeld(_:)``, so that a peer cannot make a paused connection
    ///   hold more than the limit (found by a review: 19,960 descriptors held by one connection ran the server out).
    /// - Returns: The group, or `nil` if the relay holds none (which a descriptors frame the relay forwarded never
    ///   causes).
    func takeClaimed(holding: Bool = false) -> [Int32]? {
        self.lock.lock()
        guard !self.claimed.isEmpty else {
            self.lock.unlock(withValue: self.mayReceiveValue)
            return nil
        }
        let group = self.claimed.removeFirst()
        self.claimedCount -= group.count
        if holding { self.heldCount += group.count }
        self.movedOn &+= UInt64(group.count)
        self.unlockAccounting(withValue: self.mayReceiveValue)
        return group
    }

    /// `count` descriptors taken with ``takeClaimed(holding:)`` are held no more: handed out with their frame, or
    /// closed.
    func releaseHeld(_ count: Int) {
        self.lock.lock()
        self.heldCount = max(self.heldCount - count, 0)
        self.unlockAccounting(withValue: self.mayReceiveValue)
    }

    /// Whether descriptors the peer passed wait in the relay (received and not yet taken by the channel handler),
    /// and how many have moved on so far: descriptors that wait while that count stays the same have not moved.
    func pendingDescriptors() -> (waiting: Bool, movedOn: UInt64) {
        self.lock.lock()
        let state = (!self.unclaimed.isEmpty || self.claimedCount > 0, self.movedOn)
        self.lock.unlock(withValue: self.mayReceiveValue)
        return state
    }

    /// Registers the descriptors of the next descriptors frame this side writes, before its bytes are written; the
    /// relay owns them from now on and closes them once sent, or when the connection closes. Their count is taken
    /// over from `reservation`; without one (the memory of a shared payload, bounded by its bytes) they are counted
    /// now.
    func registerOutgoing(_ group: [Int32], reservation: OutgoingDescriptorReservation? = nil) {
        self.lock.lock()
        // Also once the outbound thread has stopped, before the channel's close reaches the relay: a reply's
        // descriptors (the memory of a shared payload) registered then were kept for good (found by a fuzzing
        // review: peers that pipelined requests answered with shared payloads and closed left 800 memfds in 1,000
        // connections, until the server could accept no one). The reservation's room is given back as it is
        // released.
        if self.stoppedSending {
            self.lock.unlock(withValue: self.mayReceiveValue)
            Self.closeAll(group)
            return
        }
        self.outgoing.append(group)
        self.outgoingCount += group.count
        // Counted under the relay's lock, as every uncounting is, so that the two cannot cross.
        if let reservation, reservation.count == group.count, reservation.takeOver() {
            // Counted already.
        } else {
            OutgoingDescriptorAccounts.add(group.count, connection: self.accountID, user: self.passedBy)
        }
        self.lock.unlock(withValue: self.mayReceiveValue)
    }

    /// Reserves `bytes` of shared memory for a payload this side is about to make (``SharedPayload``), when the peer
    /// has not left more than `limit` bytes of such memory unread; returns whether the payload may go in it.
    ///
    /// A payload's memory stays alive, charged to nobody's resident memory, until the peer has read its descriptor:
    /// a peer that sends requests and reads no reply would otherwise pin a new memfd per reply, without bound, while
    /// the write watermark counted each as the few bytes of its frame (found by a review: 12.8 GB of `Shmem` from one
    /// connection). Once `limit` is reached, payloads go through the socket, where the watermark holds them. The
    /// count starts again once everything sent has been read: nothing queued for the relay or held by it, and
    /// nothing unread in the socket (`SIOCOUTQ`). One payload larger than `limit` is let through when nothing is
    /// unread.
    func reserveSharedMemory(_ bytes: Int, limit: Int) -> Bool {
        self.lock.lock()
        defer { self.lock.unlock(withValue: self.mayReceiveValue) }
        // No memory for a peer that will never read it: the payload goes in the socket, whose write fails.
        guard !self.isClosed, !self.outboundEnded, !self.socketIsClosed else { return false }
        // Not once the relay closed its sockets: their numbers may be another file's by now (found by a review).
        if self.sharedUnread > 0, self.outgoing.isEmpty, !self.outboundBusy, !self.socketIsClosed,
            Self.queuedBytes(self.relaySide, request: UInt(FIONREAD)) == 0,
            Self.queuedBytes(self.socket, request: UInt(TIOCOUTQ)) == 0
        {
            self.sharedUnread = 0
        }
        guard self.sharedUnread == 0 || self.sharedUnread + bytes <= limit else { return false }
        self.sharedUnread += bytes
        return true
    }

    /// Whether the relay has passed on to the peer's socket everything the channel wrote to the pair (or it has
    /// closed): what ``Connection/waitUntilWritten()`` waits for on a connection that passes descriptors.
    func outboundDrained() -> Bool {
        self.lock.lock()
        defer { self.lock.unlock(withValue: self.mayReceiveValue) }
        guard !self.socketIsClosed else { return true }
        return !self.outboundBusy && self.outgoing.isEmpty
            && Self.queuedBytes(self.relaySide, request: UInt(FIONREAD)) <= 0
    }

    /// Bytes the relay has sent to the peer's socket that the peer has not read yet (`TIOCOUTQ`), 0 once the relay
    /// closed it or when it cannot tell: with the pair's own count, how far the peer has read (the keepalive's
    /// measure of a peer that reads slowly).
    func unreadByPeer() -> Int {
        self.lock.lock()
        defer { self.lock.unlock(withValue: self.mayReceiveValue) }
        guard !self.socketIsClosed else { return 0 }
        return max(Int(Self.queuedBytes(self.socket, request: UInt(TIOCOUTQ))), 0)
    }

    /// What the peer holds unread of what the relay sent it, to the byte (``SocketQueue/unreadInPeer(_:)``); `nil`
    /// where that cannot be told, 0 once the socket is closed.
    func unreadInPeer() -> Int? {
        self.lock.lock()
        defer { self.lock.unlock(withValue: self.mayReceiveValue) }
        guard !self.socketIsClosed else { return 0 }
        return SocketQueue.unreadInPeer(self.socket)
    }

    /// Gives back a reservation of ``reserveSharedMemory(_:limit:)`` whose memory could not be made.
    func releaseSharedMemory(_ bytes: Int) {
        self.lock.lock()
        self.sharedUnread = max(self.sharedUnread - bytes, 0)
        self.lock.unlock(withValue: self.mayReceiveValue)
    }

    /// The bytes `ioctl(request)` counts on `descriptor` (`FIONREAD`: unread by this side; `TIOCOUTQ`, which is
    /// `SIOCOUTQ`: sent and not yet read by the peer), or -1 when it cannot tell.
    private static func queuedBytes(_ descriptor: Int32, request: UInt) -> Int32 {
        var count: Int32 = 0
        return ioctl(descriptor, request, &count) == 0 ? count : -1
    }

    /// The channel closed: descriptors received and not taken are closed, and so is everything received later. What
    /// the channel wrote is still sent; after `timeout` a peer that does not read it is cut off.
    func channelClosed(eventLoop: any EventLoop, timeout: Duration) {
        self.lock.lock()
        self.isClosed = true
        let received = self.unclaimed + self.claimed.flatMap { $0 }
        self.unclaimed = []
        self.claimed = []
        self.claimedCount = 0
        self.channel = nil
        self.unlockAccounting(withValue: 1, closing: received)
        eventLoop.scheduleTask(in: .init(timeout)) { self.abort() }
    }

    /// Returns once both threads have ended: everything the channel wrote has been sent (or the peer was cut off),
    /// and the connection's socket is closed.
    func waitUntilFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.whenFinished { continuation.resume() }
        }
    }

    /// Runs `body` once both threads have ended (at once if they have), on the thread that ended last.
    func whenFinished(_ body: @escaping @Sendable () -> Void) {
        let finished = self.finishWaiters.withLock { waiters -> Bool in
            guard waiters != nil else { return true }
            waiters!.append(body)
            return false
        }
        if finished { body() }
    }

    /// Shuts the socket down, ending both threads, unless they ended already, and closes the descriptors received and
    /// not handed out (the channel closed, or was never made).
    func abort() {
        self.lock.lock()
        self.isClosed = true
        let received = self.unclaimed + self.claimed.flatMap { $0 }
        self.unclaimed = []
        self.claimed = []
        self.claimedCount = 0
        if !self.socketIsClosed { _ = shutdown(self.socket, Int32(SHUT_RDWR)) }
        self.unlockAccounting(withValue: 1, closing: received)
    }

    /// A read of the peer's user's connections ended, or the user came back under its bound of waiting closes: the
    /// inbound thread looks again whether it may read (``PassedDescriptorCloser/beginRead(_:of:)``).
    /// - Returns: Whether the inbound thread looks: not while the relay holds its limit of descriptors in flight (it
    ///   looks again once the handler takes some).
    @discardableResult
    func readMayBegin() -> Bool {
        self.lock.lock()
        let value = self.mayReceiveValue
        self.lock.unlock(withValue: value)
        return value == 1
    }

    // MARK: - Threads

    /// Releases the lock with `value` after the descriptors in flight changed, then queues `dropped` to be closed and
    /// passes the change to the account of the peer's user (``PassedDescriptorCloser/adjustHeld(_:of:)``), in that
    /// order, so that the user's total never dips in between. Called with the lock held.
    private func unlockAccounting(withValue value: Int, closing dropped: [Int32] = []) {
        let now = self.isClosed ? 0 : self.unclaimed.count + self.claimedCount + self.heldCount
        let change = now - self.accounted
        self.accounted = now
        self.lock.unlock(withValue: value)
        if !dropped.isEmpty { self.closeReceived(dropped) }
        PassedDescriptorCloser.adjustHeld(change, of: self.passedBy)
    }

    /// 1 while the inbound thread may receive more. Called with the lock held.
    private var mayReceiveValue: Int {
        self.isClosed || self.unclaimed.count + self.claimedCount + self.heldCount < self.inFlightLimit ? 1 : 0
    }

    private static let bufferSize = 64 * 1024

    private func runInbound() {
        var scanner = DescriptorFrameScanner()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        // Room for all one sendmsg can carry, so that the kernel never drops a passed descriptor on this thread (its
        // last close could wait: a lingering socket). More than a message's maximum breaks the protocol: all of them
        // are closed, charged to the peer's user (a review tried room for the maximum only: the kernel then released
        // the rest here, and a lingering TCP socket among them held this thread and the server's shutdown).
        var received = [Int32](repeating: -1, count: Self.maximumPerCall)
        var violated = false
        var memoryWaits = 0
        loop: while true {
            self.lock.lock(whenValue: 1)
            let closed = self.isClosed
            // Checked with the lock held: ``readMayBegin()`` takes it once a read of the user's ended or its closes
            // came down, so that cannot slip between this check and the wait.
            if !closed, let refusal = PassedDescriptorCloser.beginRead(self, of: self.passedBy) {
                let starts = refusal == .paused && !self.waitsForUsersCloses
                if refusal == .paused { self.waitsForUsersCloses = true }
                self.lock.unlock(withValue: 0)
                if starts {
                    // At debug: each of the user's connections says so; the server's refusals of its new ones are
                    // logged at notice, at a bounded rate.
                    self.logger.debug(
                        "the peer's user has \(PassedDescriptorCloser.maximumWaitingPerUser) or more closes of descriptors it passed waiting (a file system that does not answer?), or \(PassedDescriptorCloser.maximumHeldPerUser) descriptors with those its connections hold: this connection reads nothing until they come down",
                        metadata: [
                            "socketipc.closes_waiting": "\(PassedDescriptorCloser.waiting(by: self.passedBy))",
                            "socketipc.descriptors_held": "\(PassedDescriptorCloser.heldDescriptors(by: self.passedBy))",
                        ]
                    )
                }
                continue
            }
            self.waitsForUsersCloses = false
            self.lock.unlock(withValue: 1)
            if closed { break }
            // A read under way (PassedDescriptorCloser.beginRead): it never waits for the peer, and ends once what it
            // brought is handed on or queued to be closed, before the bytes go on to the channel, which may wait.
            var count: Int32 = 0
            var truncated: Int32 = 0
            let length = received.withUnsafeMutableBufferPointer { descriptors in
                Self.receive(self.socket, buffer, descriptors, &count, &truncated)
            }
            if length < 0 {
                let code = errno
                PassedDescriptorCloser.endRead(of: self.passedBy)
                if code == EAGAIN || code == EWOULDBLOCK {
                    Self.waitUntilReadable(self.socket)
                    continue
                }
                if code == ENOMEM || code == ENOBUFS, memoryWaits < 100 {
                    // Out of kernel memory for the moment: wait a little (at most a second in all), as NIO's accept
                    // backs off, rather than end the connection at once.
                    memoryWaits += 1
                    usleep(10_000)
                    continue
                }
                // Anything else (ECONNRESET: the peer closed with this side's bytes unread) ends the stream after
                // the bytes already passed on, as before: failing the channel at once lost those (found by a review
                // of an earlier fix, which did so to log the error). So it is logged here.
                self.logger.log(
                    level: code == ECONNRESET ? .debug : .notice,
                    "recvmsg on a connection that passes descriptors failed: the connection ends as at end of stream",
                    metadata: ["errno": "\(code)", "error": "\(errnoDescription(code))"]
                )
                break
            }
            memoryWaits = 0
            let group = Array(received[0..<Int(count)])
            if truncated == 2 {
                // This side's shortage, not the peer's fault: the connection ends with going-away 0x05 (resource
                // exhausted), which the server logs as it logs every failed connection, at a bounded rate (a security
                // module that refuses what a hostile peer passes makes this path the peer's to take) (found by a
                // review: a server short of descriptors closed honest peers for a protocol violation, as systemd no
                // longer does since #42043).
                self.closeReceived(group)
                PassedDescriptorCloser.endRead(of: self.passedBy)
                let text =
                    "out of file descriptors (RLIMIT_NOFILE), or refused by a security module: could not take the "
                    + "descriptors passed (MSG_CTRUNC)"
                self.violate(text, code: .resourceExhausted, reason: .resourceExhausted)
                violated = true
                break
            }
            if truncated != 0 {
                self.closeReceived(group)
                PassedDescriptorCloser.endRead(of: self.passedBy)
                self.violate("the peer passed descriptors the kernel could not deliver whole (MSG_CTRUNC)")
                violated = true
                break
            }
            let found = scanner.scan(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
            let problem = self.receive(
                group,
                found: found,
                helloFlags: scanner.helloFlags,
                mayBeClaimedLater: scanner.mayBeInsideDescriptorsFrame
            )
            PassedDescriptorCloser.endRead(of: self.passedBy)
            if let problem {
                self.violate(problem)
                violated = true
                break
            }
            if length == 0 { break }
            var offset = 0
            while offset < length {
                let sent = SocketSend.send(self.relaySide, buffer.baseAddress! + offset, length - offset)
                if sent <= 0 { break loop }
                offset += sent
            }
        }
        // The peer's end of stream, passed on. Not after a violation: the channel would read that end of stream
        // before the violation's event and close without telling the peer why; the violation closes it instead.
        if !violated { _ = shutdown(self.relaySide, Int32(SHUT_WR)) }
        PassedDescriptorCloser.readerEnded(self, of: self.passedBy)
        self.threadEnded()
    }

    /// Adds what one `recvmsg` brought and claims a group for each descriptors frame that ended in it.
    /// - Returns: Why the peer broke the protocol, if it did.
    private func receive(
        _ group: [Int32],
        found: [DescriptorFrameScanner.Found],
        helloFlags: HelloFlags?,
        mayBeClaimedLater: Bool
    ) -> String? {
        self.lock.lock()
        if self.isClosed {
            self.lock.unlock(withValue: 1)
            self.closeReceived(group)
            return nil
        }
        var problem: String?
        // Descriptors left unclaimed by the last read must be claimed by this one: a descriptors frame cut by the end
        // of a read is completed by the next.
        let carriedOver = !self.unclaimed.isEmpty
        if !group.isEmpty {
            self.unclaimed += group
            if helloFlags?.contains(.descriptors) != true {
                problem = "the peer passed descriptors without announcing descriptor passing in its hello"
            } else if self.unclaimed.count > self.maximumPerMessage {
                problem =
                    "the peer passed \(self.unclaimed.count) descriptors before a message took them; at most "
                    + "\(self.maximumPerMessage) may travel with one message (ConnectionOptions.maximumDescriptorsPerMessage)"
            }
        }
        // Without the flag in the peer's hello, kind 0x0D is an unknown kind, which the channel refuses.
        let peerPassesDescriptors = helloFlags?.contains(.descriptors) == true
        for frame in found where problem == nil && peerPassesDescriptors {
            guard let count = frame.count else { continue }
            if count > self.maximumPerMessage {
                problem =
                    "the peer announced \(count) descriptors for one message; this side accepts at most "
                    + "\(self.maximumPerMessage) (ConnectionOptions.maximumDescriptorsPerMessage)"
            } else if self.unclaimed.count < count {
                problem =
                    "the peer announced \(count) descriptors but passed \(self.unclaimed.count) with its descriptors frame"
            } else {
                self.claimed.append(Array(self.unclaimed.prefix(count)))
                self.unclaimed.removeFirst(count)
                self.claimedCount += count
                self.movedOn &+= UInt64(count)
            }
        }
        if problem == nil && !self.unclaimed.isEmpty && (!mayBeClaimedLater || carriedOver) {
            problem = "the peer passed descriptors with bytes that are not a descriptors frame (0x0D)"
        }
        var dropped: [Int32] = []
        if problem != nil {
            dropped = self.unclaimed + self.claimed.flatMap { $0 }
            self.unclaimed = []
            self.claimed = []
            self.claimedCount = 0
        }
        self.unlockAccounting(withValue: self.mayReceiveValue, closing: dropped)
        return problem
    }

    private func runOutbound() {
        var scanner = DescriptorFrameScanner()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        var kept = 0  // the start of a frame header held back from the last read
        var sendFailed = false
        loop: while true {
            self.setOutboundBusy(false)
            let length = systemRead(self.relaySide, buffer.baseAddress! + kept, buffer.count - kept)
            if length < 0 && errno == EINTR { continue }
            if length <= 0 { break }
            self.setOutboundBusy(true)
            let found = scanner.scan(UnsafeRawBufferPointer(rebasing: buffer[kept..<(kept + length)]))
            let end = kept + length - scanner.incompleteHeaderBytes
            // Each descriptors frame starts a sendmsg of its own, which carries its group and runs up to the next one,
            // so that the kernel attaches each group to its frame's first byte.
            let starts = found.compactMap { $0.start.map { $0 + kept } }
            if !self.sendPlain(buffer, from: 0, to: starts.first ?? end) {
                sendFailed = true
                break
            }
            for (index, start) in starts.enumerated() {
                let segmentEnd = index + 1 < starts.count ? starts[index + 1] : end
                let group = self.nextOutgoing()
                let sent = group.withUnsafeBufferPointer { descriptors in
                    Self.send(self.socket, buffer.baseAddress! + start, segmentEnd - start, descriptors)
                }
                let sendErrno = errno
                self.closeSent(group)
                let shortage = sendErrno == ETOOMANYREFS || sendErrno == ENOBUFS || sendErrno == ENOMEM
                if sent < 0 && !group.isEmpty && shortage {
                    // This side's shortage, not the peer's leaving: the kernel passes no more descriptors of this
                    // side's user while too many sent before wait unread in their receivers' sockets (ETOOMANYREFS:
                    // more than its RLIMIT_NOFILE in flight), or has no memory for them. Said, as going-away 0x05 and
                    // in the log, not a bare close (found by a review: a peer that read none of its shared payloads
                    // made every other peer's descriptors fail so, silently).
                    let cause = SocketIPCError.systemCall("sendmsg", errno: sendErrno)
                    let text = "the kernel refused to pass descriptors: \(cause)"
                    self.logger.error("\(text)")
                    self.violate(text, code: .resourceExhausted, reason: .resourceExhausted)
                }
                if sent <= 0 || !self.sendPlain(buffer, from: start + sent, to: segmentEnd) {
                    sendFailed = true
                    break loop
                }
            }
            kept = kept + length - end
            if kept > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + end, byteCount: kept) }
        }
        if sendFailed { self.discardOutgoingWhilePeerFinishes(buffer) }
        // The channel closed its end (everything it wrote is sent), or the peer is gone: end both directions.
        self.lock.lock()
        self.outboundEnded = true
        let left = self.outgoing.flatMap { $0 }
        self.outgoing = []
        self.outgoingCount = 0
        let (stopped, admitted) = OutgoingDescriptorAccounts.connectionStopped(self.accountID)
        if !self.socketIsClosed { _ = shutdown(self.socket, Int32(SHUT_RDWR)) }
        self.lock.unlock(withValue: self.mayReceiveValue)
        OutgoingDescriptorAccounts.resume(admitted: admitted, stopped: stopped)
        self.closeSent(left)
        _ = shutdown(self.relaySide, Int32(SHUT_RDWR))
        self.threadEnded()
    }

    /// After the socket refused a send for good (the peer closed, or shut its reading side down): drops what the
    /// channel still writes, while the inbound thread passes on the peer's last bytes, so that the channel reads them
    /// (a going-away frame that says why the peer closed) before the connection ends; until the channel closes its
    /// end, at most ``peerFinishingTime``. Before, both directions were shut at once, and the going-away frame was
    /// lost whenever this side had written after the peer's close (found by CI: `socket-ipc send --fd` to a server
    /// that refused its message reported a close without a word).
    private func discardOutgoingWhilePeerFinishes(_ buffer: UnsafeMutableRawBufferPointer) {
        self.lock.lock()
        // Nothing more is sent: descriptors registered from now on are closed at once, and no shared memory is made.
        self.outboundEnded = true
        self.lock.unlock(withValue: self.mayReceiveValue)
        self.setOutboundBusy(false)
        let deadline = ContinuousClock.now.advanced(by: Self.peerFinishingTime)
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return }
            let (seconds, attoseconds) = left.components
            var readable = pollfd(fd: self.relaySide, events: Int16(POLLIN), revents: 0)
            let ready = poll(&readable, 1, Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return }
            let length = systemRead(self.relaySide, buffer.baseAddress!, buffer.count)
            if length < 0 && errno == EINTR { continue }
            if length <= 0 { return }
        }
    }

    /// How long the outbound thread keeps the connection after the socket refused a send, for the peer's last bytes
    /// to reach the channel: a peer that shut only its reading side down and goes on writing is closed then.
    static let peerFinishingTime: Duration = .seconds(1)

    /// Says whether the outbound thread holds bytes it has not sent (see ``reserveSharedMemory(_:limit:)``).
    private func setOutboundBusy(_ busy: Bool) {
        self.lock.lock()
        self.outboundBusy = busy
        self.lock.unlock(withValue: self.mayReceiveValue)
    }

    /// Sends `buffer[from..<to]` to the socket. Returns `false` once the socket failed.
    private func sendPlain(_ buffer: UnsafeMutableRawBufferPointer, from start: Int, to end: Int) -> Bool {
        var offset = start
        while offset < end {
            let sent = SocketSend.send(self.socket, buffer.baseAddress! + offset, end - offset)
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }

    /// The next group to send, no longer counted as queued: from now on the sending thread owns it (and closes it
    /// once sent, or if the send fails).
    private func nextOutgoing() -> [Int32] {
        self.lock.lock()
        let group = self.outgoing.isEmpty ? [] : self.outgoing.removeFirst()
        self.outgoingCount -= group.count
        self.lock.unlock(withValue: self.mayReceiveValue)
        return group
    }

    private func violate(
        _ message: String,
        code: SocketIPCError.Code = .protocolViolation,
        reason: GoAwayReason = .protocolViolation
    ) {
        let violation = RelayViolation(error: SocketIPCError(code, message), reason: reason)
        self.lock.lock()
        self.violation = violation
        let channel = self.channel
        self.lock.unlock(withValue: self.mayReceiveValue)
        if let channel { Self.fail(channel, with: violation) }
    }

    private static func fail(_ channel: any Channel, with violation: RelayViolation) {
        // As a protocol error the channel handler found itself: going-away (0x01, or 0x05 for this side's own
        // shortage), then the close.
        channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(violation) }
    }

    private func threadEnded() {
        self.lock.lock()
        self.threadsRunning -= 1
        let last = self.threadsRunning == 0
        if last { PassedDescriptorCloser.remove(self, of: self.passedBy) }
        var left: [Int32] = []
        var leftOutgoing: [Int32] = []
        var admitted: [UnsafeContinuation<Bool, any Error>] = []
        var stopped: [UnsafeContinuation<Bool, any Error>] = []
        if last {
            self.socketIsClosed = true
            // The socket is closed below, once the lock is released: descriptors in flight in its receive queue (a
            // lingering TCP socket whose close waits) are released by its close, which would hold every thread
            // that takes the lock meanwhile, an event loop or a closing thread's wake-up (found by a review). It is
            // closed on this thread, before the finish waiters run, so that the connection's slot is not given back
            // while the socket is still open (a review of a close queued instead: a user's sockets then piled up
            // behind its closes that never end, 700 a second, past every bound).
            _ = shutdown(self.socket, Int32(SHUT_RDWR))
            _ = close(self.relaySide)
            // Descriptors no frame claimed now never will be; those claimed wait for the channel, which may still
            // read the frames that claimed them (the channel's close closes them if it does not).
            left += self.unclaimed
            leftOutgoing = self.outgoing.flatMap { $0 }
            self.unclaimed = []
            self.outgoing = []
            self.outgoingCount = 0
            (stopped, admitted) = OutgoingDescriptorAccounts.connectionStopped(self.accountID)
            if self.isClosed {
                left += self.claimed.flatMap { $0 }
                self.claimed = []
                self.claimedCount = 0
            }
        }
        self.unlockAccounting(withValue: 1, closing: left)
        OutgoingDescriptorAccounts.resume(admitted: admitted, stopped: stopped)
        self.closeSent(leftOutgoing)
        if last {
            if self.lingersWhilePeerHoldsSharedMemory { self.lingerWhilePeerHoldsSharedMemory() }
            _ = close(self.socket)
            let waiters = self.finishWaiters.withLock { waiters in
                defer { waiters = nil }
                return waiters ?? []
            }
            for waiter in waiters { waiter() }
        }
    }

    /// Stops keeping the socket for a peer that holds shared payloads unread (``lingersWhilePeerHoldsSharedMemory``):
    /// a server's shutdown waits no longer for it.
    func stopLingering() {
        self.lock.lock()
        self.lingeringStopped = true
        self.lock.unlock(withValue: self.mayReceiveValue)
    }

    /// Waits, on the last thread, while shared payloads may be unread in the socket (some were made since the peer
    /// last had read everything, and the peer has not read or dropped every byte sent: `TIOCOUTQ`, which falls to 0
    /// when the peer reads them or closes), until ``stopLingering()``. Looks again after 10 ms, then less often, at
    /// most every second.
    private func lingerWhilePeerHoldsSharedMemory() {
        var pause: UInt32 = 10_000
        var drained = false
        while true {
            self.lock.lock()
            let waits = self.sharedUnread > 0 && !self.lingeringStopped
            self.lock.unlock(withValue: self.mayReceiveValue)
            guard waits else { return }
            // What is left unread in this side's receive queue goes first (the socket is shut down both ways: the peer
            // can add nothing): a peer that passed its own end of the connection in there and exited would keep that
            // end, its receive queue and so `TIOCOUTQ` alive for as long as this socket is open, and this wait would
            // never end (found by a review: 278 slots and their threads held after the attackers had exited, until
            // the server stopped). Read under the user's limits, as any read of what it passed, and again later while
            // they hold it back.
            if !drained { drained = self.discardUnread() }
            guard Self.queuedBytes(self.socket, request: UInt(TIOCOUTQ)) > 0 else { return }
            usleep(pause)
            pause = min(pause * 2, 1_000_000)
        }
    }

    /// Reads and drops what is left in the socket's receive queue, closing the descriptors that came with it, charged
    /// to the peer's user; for a socket shut down for reading, so that the queue only shrinks. Each `recvmsg` is one of
    /// the user's reads (``PassedDescriptorCloser/tryBeginRead(of:)``): none while the user is paused or has its
    /// reads under way, so that what it passed enters this process only within its bounds (found by a review: a
    /// paused user's 20,240 descriptors in flight, drained at once, filled the server's descriptor table).
    /// - Returns: Whether the queue is empty (or `recvmsg` failed); `false` when the user's limits held the drain
    ///   back, to try again later.
    private func discardUnread() -> Bool {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        var descriptors = [Int32](repeating: -1, count: Self.maximumPerCall)
        while true {
            guard PassedDescriptorCloser.tryBeginRead(of: self.passedBy) else { return false }
            var count: Int32 = 0
            var truncated: Int32 = 0
            let length = descriptors.withUnsafeMutableBufferPointer { received in
                Self.receive(self.socket, buffer, received, &count, &truncated)
            }
            if count > 0 { self.closeReceived(Array(descriptors[0..<Int(count)])) }
            PassedDescriptorCloser.endRead(of: self.passedBy)
            if length <= 0 { return true }
        }
    }

    // MARK: - System calls

    /// The most descriptors one `sendmsg` or `recvmsg` carries: the kernel's `SCM_MAX_FD`, 253.
    static let maximumPerCall = 253

    /// Waits with `poll(2)` until `socket` has bytes to read, its peer's end of stream or an error; retried on
    /// `EINTR`. Any other failure of `poll` (`ENOMEM`) waits 10 ms instead, so that the caller's `recvmsg` says what
    /// is wrong without spinning.
    private static func waitUntilReadable(_ socket: Int32) {
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        while poll(&descriptor, 1, -1) < 0 {
            guard errno == EINTR else {
                usleep(10_000)
                return
            }
        }
    }

    /// `recvmsg` with room for ``maximumPerCall`` descriptors, `MSG_CMSG_CLOEXEC` and `MSG_DONTWAIT`.
    private static func receive(
        _ socket: Int32,
        _ buffer: UnsafeMutableRawBufferPointer,
        _ descriptors: UnsafeMutableBufferPointer<Int32>,
        _ count: inout Int32,
        _ truncated: inout Int32
    ) -> Int {
        #if os(Linux)
        return csocketipc_receive_with_descriptors(
            socket, buffer.baseAddress, UInt(buffer.count), descriptors.baseAddress, Int32(descriptors.count),
            &count, &truncated, Int32(MSG_DONTWAIT)
        )
        #else
        // Untested: descriptor passing is Linux-only for now (the relay is never made elsewhere).
        errno = ENOSYS
        return -1
        #endif
    }

    /// `sendmsg` of `length` bytes with `descriptors` attached, `MSG_NOSIGNAL`.
    private static func send(
        _ socket: Int32,
        _ bytes: UnsafeRawPointer,
        _ length: Int,
        _ descriptors: UnsafeBufferPointer<Int32>
    ) -> Int {
        #if os(Linux)
        return csocketipc_send_with_descriptors(
            socket, bytes, UInt(length), descriptors.baseAddress, Int32(descriptors.count)
        )
        #else
        errno = ENOSYS
        return -1
        #endif
    }

    /// Closes this side's own descriptors (sent, or to send).
    static func closeAll(_ descriptors: [Int32]) {
        closeDescriptors(descriptors)
    }

    /// Closes descriptors the peer passed, charged to its user (see ``closePassedDescriptors(_:passedBy:)``).
    func closeReceived(_ descriptors: [Int32]) {
        closePassedDescriptors(descriptors, passedBy: self.passedBy)
    }
}

/// The event a ``DescriptorRelay`` fires through its channel's pipeline when the peer broke the rules of passing
/// descriptors (the channel handler says going-away `0x01` and closes), or this side could not take them (`0x05`).
struct RelayViolation: Sendable {
    let error: SocketIPCError
    /// The going-away reason the peer gets.
    let reason: GoAwayReason
}
