#if os(Linux)
import CSocketIPCLinux
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NIOCore
import NIOPosix
import Synchronization

/// Closes descriptors a peer passed whose last close may wait for something the peer controls
/// (``csocketipc_close_may_wait``), on threads of its own, never on the calling thread (an event loop, most often),
/// charged to the user who passed them.
///
/// - A passed Unix-domain socket may hold, in its receive queue, descriptors in flight that no one else holds: a TCP
///   socket with `SO_LINGER` on and a send queue its peer never drains, passed into it and closed by the sender. Their
///   last close happens with the socket's, in the thread that closes it, and waits out the linger time the peer chose
///   (found by a review: such a socket, passed to `serve`, stopped an event loop, and every connection on it, for as
///   long as the peer kept the TCP connection open). `SO_LINGER` can be turned off only on a socket one holds
///   (``closePassedDescriptors(_:passedBy:)``), not on one in flight.
/// - A file's close flushes it to its file system: a FUSE file system that the peer serves may never answer
///   (`FUSE_FLUSH`), and the close waits for good (found by a review: a file on such a mount, passed with a frame
///   that did not take it, froze an event loop, every connection on it and the server's shutdown). A device's close
///   may wait too (a terminal drains its output).
///
/// A thread takes the descriptors queued one after another and ends when none is left; another starts whenever a
/// descriptor could be taken and every thread is in the middle of a close, up to ``maximumThreads``, so that one close
/// that waits does not hold the others. Descriptors are never closed on the caller's thread, where one close that
/// never returns would stop an event loop and every connection on it.
///
/// **Charged by user** (``PassedDescriptorCloseQueue``): a user (`SO_PEERCRED`'s uid) whose closes never return holds
/// at most ``maximumThreadsPerUser`` of the threads, and its other descriptors wait open in its own queue. Once
/// ``maximumWaitingPerUser`` of its closes wait, the relays of its connections read nothing more (the kernel pushes
/// back on the peer) until they come down again; and once none of them has ended for ``stallTime`` meanwhile, the
/// server refuses its new connections that would pass descriptors. Before, one user that kept 8 closes waiting for
/// good held every closing thread, and its further descriptors queued without bound until the process ran out of
/// descriptors and refused every user at `accept`.
///
/// **Held by user:** descriptors a user's connections received and the handler has not taken yet count with its
/// waiting closes against ``maximumHeldPerUser`` (``adjustHeld(_:of:)``): a connection that closes turns what it holds
/// into closes (found by a review: connections that each held 8 descriptors no frame had claimed yet, then closed,
/// left 1,048 closes waiting where the bound was meant to be 570).
///
/// **Reads by user:** one `recvmsg` may bring 253 descriptors (`SCM_MAX_FD`) whatever a message's maximum, and a relay
/// blocked in `recvmsg` is past any check of the bounds. So a relay waits for the peer with `poll(2)`, holding nothing,
/// and reads only once it may begin a read (``beginRead(_:of:)``): at most ``maximumReadsPerUser`` of a user's
/// connections read at once, none while it is paused. What a user holds, waiting closes and descriptors not yet
/// taken, stays under ``maximumHeldPerUser`` plus ``maximumReadsPerUser`` × 253 however many connections it has
/// (found by a review: one user's 100 connections, each passing 253 files of a file system that never answered, left
/// 19,881 closes waiting, 99.5 % of the server's descriptors).
enum PassedDescriptorCloser {
    /// The user who passed a descriptor: the peer's uid, `nil` when its credentials are unknown.
    typealias User = PassedDescriptorCloseQueue.User

    /// The most closing threads at once: 32.
    static let maximumThreads = 32
    /// The most threads closing one user's descriptors at once: 2.
    static let maximumThreadsPerUser = 2
    /// The number of one user's closes waiting (queued or running) at which its connections stop reading descriptors
    /// and its new ones are refused: 64, the least a relay holds in flight (``DescriptorRelay/inFlightLimit``).
    static let maximumWaitingPerUser = 64
    /// How long a user over its bound must go without a close ending before the server refuses its new connections
    /// that would pass descriptors: 1 second. Closes that never end are what it catches, not a burst that drains.
    static let stallTime: Duration = .seconds(1)
    /// The most connections of one user that read at once (``beginRead(_:of:)``): 2. Each read is a non-blocking
    /// `recvmsg` and the bookkeeping of what it brought, never a wait for the peer.
    static let maximumReadsPerUser = 2
    /// The most descriptors of one user's, received and not yet taken by the handler plus waiting closes, before its
    /// connections stop reading: 1,024, sixteen connections' worth of ``DescriptorRelay/inFlightLimit`` at its least.
    /// Its reads resume when the handler takes some or closes end.
    static let maximumHeldPerUser = 1024

    /// The account of this side's own descriptors (the duplicates it sends; ``closeDescriptors(_:)``): `uid_t` -1,
    /// which never names a user (`setresuid(2)` takes it for "unchanged"), so no peer's connection is paused or
    /// refused for it.
    static let ownDescriptors: User = UInt32.max
    /// The account of this side's own Unix-domain sockets: `uid_t` -2, never a user's either (the kernel reports
    /// unmapped ids as the overflow uid, 65534). Apart from ``ownDescriptors``, so that forwarded files whose closes
    /// never return (two are enough to hold that account's threads) do not hold back the close of a socket this side
    /// sent, whose other end waits for its end of stream (found by a review).
    static let ownSockets: User = UInt32.max - 1

    /// The account a peer of user `uid` is charged to: its uid, but when that is one of this side's own accounts'
    /// (``ownSockets``' -2 is a valid uid, the old `nfsnobody` of some systems; -1 never is), the account of peers
    /// whose credentials are unknown (`nil`), which no Linux peer has: so that no peer shares an account of this
    /// side's own, whose closes its own could then hold up.
    static func account(ofPeer uid: UInt32?) -> User {
        guard let uid, uid != Self.ownDescriptors, uid != Self.ownSockets else { return nil }
        return uid
    }

    /// Each closing thread's stack: a close needs little.
    private static let stackSize = 128 * 1024

    private struct State {
        var queue = PassedDescriptorCloseQueue(
            maximumThreads: PassedDescriptorCloser.maximumThreads,
            maximumThreadsPerUser: PassedDescriptorCloser.maximumThreadsPerUser,
            maximumWaitingPerUser: PassedDescriptorCloser.maximumWaitingPerUser,
            stallTime: PassedDescriptorCloser.stallTime,
            maximumReadsPerUser: PassedDescriptorCloser.maximumReadsPerUser,
            maximumHeldPerUser: PassedDescriptorCloser.maximumHeldPerUser
        )
        /// The relays of each user's connections, told when the user comes back under its bound.
        var relays: [User: [ObjectIdentifier: DescriptorRelay]] = [:]
        /// The relays of each user's connections that wait for one of its reads to end, first come first told.
        var readWaiters: [User: [DescriptorRelay]] = [:]

        /// The first relay of `user`'s that waits for a read to end, if one of its reads may begin now.
        mutating func nextReader(of user: User) -> DescriptorRelay? {
            guard self.queue.mayBeginRead(user), var waiters = self.readWaiters[user], !waiters.isEmpty else {
                return nil
            }
            let next = waiters.removeFirst()
            self.readWaiters[user] = waiters.isEmpty ? nil : waiters
            return next
        }

        /// The relays of `user`'s connections, to tell when a pause of the user's ended.
        func relays(of user: User) -> [DescriptorRelay] {
            self.relays[user].map { Array($0.values) } ?? []
        }

        /// Takes `relay`, a connection of `user`'s, off the relays that wait for a read to end.
        mutating func removeReader(_ relay: DescriptorRelay, of user: User) {
            guard let waiters = self.readWaiters[user] else { return }
            let left = waiters.filter { $0 !== relay }
            self.readWaiters[user] = left.isEmpty ? nil : left
        }
        /// Whether a retry of threads that could not be started is scheduled.
        var retryScheduled = false
        /// What to do once the queued descriptors of a group are closed (``close(_:passedBy:then:)``), by descriptor:
        /// a descriptor's number is unique while it is open, and its entry is taken before it is closed.
        var completions: [Int32: CloseCompletion] = [:]
        /// Descriptors of this side's own queued on a peer's account (``close(_:passedBy:own:then:)``), closed as this
        /// side's own are: taken out as they are taken to be closed.
        var own: Set<Int32> = []
    }

    /// What to run once the last of a group's queued descriptors is closed.
    final class CloseCompletion: @unchecked Sendable {
        /// The group's descriptors not closed yet; under the closer's lock.
        var remaining: Int
        let body: @Sendable () -> Void

        init(remaining: Int, body: @escaping @Sendable () -> Void) {
            self.remaining = remaining
            self.body = body
        }
    }

    /// How long after a thread could not be started (the process at its limit of threads) the closer tries again,
    /// should nothing else start one meanwhile: 100 ms.
    private static let retryDelay: TimeAmount = .milliseconds(100)

    private static let state = Mutex(State())

    /// Queues `descriptors`, which `user` passed, to be closed (with ``csocketipc_close_passed``), starting threads
    /// as needed. Should a thread not start (the process is at its limit of threads), the descriptors wait for the
    /// next call to start one.
    ///
    /// - Parameter completion: Run on the closing thread once the last of `descriptors` is closed.
    /// - Parameter own: Whether the descriptors are this side's own (closed with a plain `close(2)`, a socket's
    ///   `SO_LINGER` left as it is), charged to `user` all the same.
    static func close(
        _ descriptors: [Int32],
        passedBy user: User,
        own: Bool = false,
        then completion: (@Sendable () -> Void)? = nil
    ) {
        let now = ContinuousClock.now
        let starting = self.state.withLock { state in
            if own { state.own.formUnion(descriptors) }
            if let completion, !descriptors.isEmpty {
                let shared = CloseCompletion(remaining: descriptors.count, body: completion)
                for descriptor in descriptors { state.completions[descriptor] = shared }
            }
            return state.queue.enqueue(descriptors, by: user, now: now)
        }
        self.startThreads(starting)
    }

    /// Why a read of a connection may not begin (``beginRead(_:of:)``).
    enum ReadRefusal {
        /// The user has ``maximumWaitingPerUser`` or more closes waiting, or holds ``maximumHeldPerUser`` descriptors
        /// with them: the relay is told once that ends.
        case paused
        /// ``maximumReadsPerUser`` of the user's reads are under way: the relay is told when one ends.
        case readsUnderWay
    }

    /// Begins a read of `relay`, a connection of `user`'s, unless `user` is paused (over a bound) or at
    /// ``maximumReadsPerUser`` reads under way; then the relay is told (``DescriptorRelay/readMayBegin()``) when that
    /// changes. Called with the relay's lock held, so that the telling cannot slip in before the relay waits.
    /// - Returns: `nil` when the read may begin: the caller ends it with ``endRead(of:)`` and must not wait for the
    ///   peer meanwhile; otherwise why not.
    static func beginRead(_ relay: DescriptorRelay, of user: User) -> ReadRefusal? {
        self.state.withLock { state in
            if state.queue.beginRead(user) {
                // No longer waiting: told later, it would take the turn of one that waits (a lost wake-up).
                state.removeReader(relay, of: user)
                return nil
            }
            if state.queue.isPaused(user) { return .paused }
            if state.readWaiters[user]?.contains(where: { $0 === relay }) != true {
                state.readWaiters[user, default: []].append(relay)
            }
            return .readsUnderWay
        }
    }

    /// Begins a read of `user`'s if one may begin now (the user is not paused, and fewer than its maximum of reads are
    /// under way), without waiting for a turn: for a relay that drops what is left in a closed connection's socket and
    /// tries again later. End it with ``endRead(of:)``.
    static func tryBeginRead(of user: User) -> Bool {
        self.state.withLock { $0.queue.beginRead(user) }
    }

    /// Ends a read that ``beginRead(_:of:)`` began, and tells the next relay of `user`'s that waits for one.
    static func endRead(of user: User) {
        // One turn of the lock on every read's path when no relay waits.
        let next = self.state.withLock { state -> DescriptorRelay? in
            state.queue.endRead(user)
            return state.nextReader(of: user)
        }
        if let next, !next.readMayBegin() { self.tellNextReader(of: user) }
    }

    /// Tells the first relay of `user`'s that waits for a read to end, if one of its reads may begin now; and the
    /// next, should that one not wake (its own limit of descriptors in flight reached: it looks again once the
    /// handler takes some), so that the turn is not lost (found by a review).
    private static func tellNextReader(of user: User) {
        while let next = self.state.withLock({ $0.nextReader(of: user) }) {
            if next.readMayBegin() { return }
        }
    }

    /// Counts `change` more (or, negative, fewer) descriptors that `user`'s connections received and the handler has
    /// not taken, and tells its relays when that ends a pause. Descriptors that go on to be closed are queued first.
    static func adjustHeld(_ change: Int, of user: User) {
        guard change != 0 else { return }
        let relays = self.state.withLock { state -> [DescriptorRelay] in
            guard state.queue.adjustHeld(change, of: user) else { return [] }
            return state.relays(of: user)
        }
        for relay in relays { relay.readMayBegin() }
    }

    /// How many descriptors `user`'s connections received that the handler has not taken.
    static func heldDescriptors(by user: User) -> Int {
        self.state.withLock { $0.queue.heldDescriptors(by: user) }
    }

    /// `relay`, a connection of `user`'s, reads no more: it no longer waits for a read to end, and, had it been told
    /// that one did, the next relay that waits is told instead.
    static func readerEnded(_ relay: DescriptorRelay, of user: User) {
        self.state.withLock { $0.removeReader(relay, of: user) }
        self.tellNextReader(of: user)
    }

    /// Whether `user` is over its bound of waiting closes and none of them has ended for ``stallTime``: a server
    /// refuses its new connections that would pass descriptors.
    static func isStalled(_ user: User) -> Bool {
        let now = ContinuousClock.now
        return self.state.withLock { $0.queue.isStalled(user, now: now) }
    }

    /// How many of `user`'s descriptors a peek at what it queued may copy into this process now (``QueuedDescriptors``):
    /// none while the user is paused (over its bound of waiting closes, or at ``maximumHeldPerUser`` with them), else
    /// what is left of ``maximumHeldPerUser``, at most 253 (`SCM_MAX_FD`). A peek copies the descriptors of one message,
    /// and they then wait for a closing thread: without this bound, peers connected before an activated server started
    /// filled its table of descriptors, 253 at a time, before any bound of the user's was looked at (a review: 16,384
    /// of 16,384 taken with 70 connections, and no other user served).
    static func peekRoom(for user: User) -> Int {
        self.state.withLock { state in
            guard !state.queue.isPaused(user) else { return 0 }
            let left = state.queue.maximumHeldPerUser - state.queue.waiting(by: user) - state.queue.heldDescriptors(by: user)
            return max(0, min(Int(CSOCKETIPC_MAX_DESCRIPTORS), left))
        }
    }

    /// How many closes of `user`'s descriptors wait, queued or running.
    static func waiting(by user: User) -> Int {
        self.state.withLock { $0.queue.waiting(by: user) }
    }

    /// Tells `relay`, a connection of `user`'s, whenever `user` comes back under its bound, until ``remove(_:of:)``.
    static func add(_ relay: DescriptorRelay, of user: User) {
        self.state.withLock { $0.relays[user, default: [:]][ObjectIdentifier(relay)] = relay }
    }

    /// Stops telling `relay`, a connection of `user`'s (its threads ended).
    static func remove(_ relay: DescriptorRelay, of user: User) {
        self.state.withLock { state in
            state.relays[user]?[ObjectIdentifier(relay)] = nil
            if state.relays[user]?.isEmpty == true { state.relays[user] = nil }
        }
    }

    private static func startThreads(_ count: Int) {
        var failed = false
        for _ in 0..<count {
            do {
                try DetachedThread.start(name: "sipc-close", stackSize: Self.stackSize) { Self.run() }
            } catch {
                self.state.withLock { $0.queue.threadNotStarted() }
                failed = true
            }
        }
        if failed { self.scheduleRetry() }
    }

    /// Tries again, after ``retryDelay``, to start the threads that could not be started: with no thread left and
    /// its user's relays paused, nothing else might ask again, and its descriptors would wait for good (found by a
    /// review).
    private static func scheduleRetry() {
        let schedules = self.state.withLock { state -> Bool in
            defer { state.retryScheduled = true }
            return !state.retryScheduled
        }
        guard schedules else { return }
        MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: Self.retryDelay) {
            let starting = self.state.withLock { state -> Int in
                state.retryScheduled = false
                return state.queue.threadsWanted()
            }
            self.startThreads(starting)
        }
    }

    /// Closes queued descriptors until none is left that this thread may take.
    private static func run() {
        while true {
            guard
                let (next, completion, isOwn) = self.state.withLock({ state in
                    state.queue.next().map {
                        ($0, state.completions.removeValue(forKey: $0.descriptor), state.own.remove($0.descriptor) != nil)
                    }
                })
            else { return }
            self.startThreads(next.threadsToStart)
            #if os(Linux)
            if isOwn || next.user == Self.ownDescriptors || next.user == Self.ownSockets {
                // This side's own: its sockets are its application's, whose SO_LINGER is left as it is.
                _ = closeOwn(next.descriptor)
            } else {
                _ = csocketipc_close_passed(next.descriptor)
            }
            #endif
            let now = ContinuousClock.now
            var completed: CloseCompletion?
            let relays = self.state.withLock { state -> [DescriptorRelay] in
                if let completion {
                    completion.remaining -= 1
                    if completion.remaining == 0 { completed = completion }
                }
                guard state.queue.closed(by: next.user, now: now) else { return [] }
                return state.relays(of: next.user)
            }
            completed?.body()
            for relay in relays { relay.readMayBegin() }
        }
    }
}

/// `close(2)` of this side's own descriptor (a name `PassedDescriptorCloser.close(_:passedBy:)` does not hide).
private func closeOwn(_ descriptor: Int32) -> Int32 {
    close(descriptor)
}
