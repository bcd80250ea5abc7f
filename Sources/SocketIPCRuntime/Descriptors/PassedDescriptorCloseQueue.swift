import NIOCore

/// The bookkeeping of ``PassedDescriptorCloser``, without I/O: which descriptors wait to be closed, charged to the
/// user who passed them, which one a closing thread takes next, and how many threads to start.
///
/// A close that waits for good (a file on a FUSE file system its peer serves and never answers) holds its thread.
/// Charged by user, such closes hold only that user's share:
/// - at most ``maximumThreadsPerUser`` threads close one user's descriptors at once; the user's others wait in its
///   own queue, and the other users' closes go on on other threads (users take turns);
/// - a user with ``maximumWaitingPerUser`` or more closes waiting (queued or running) is over its bound: its
///   connections read no more descriptors (``isOverBound(_:)``), so that its waiting closes, each an open
///   descriptor, cannot run the process out of descriptors; and once none of its closes has ended for
///   ``stallTime`` while it is over its bound, it is *stalled* and refused new connections that would pass
///   descriptors (``isStalled(_:now:)``). A burst of an honest user's descriptors (253 files with one message) is
///   over the bound only while its closes drain, and is not refused;
/// - descriptors its connections received and the handler has not taken yet (``adjustHeld(_:of:)``) count with its
///   waiting closes against ``maximumHeldPerUser``: a connection that closes turns them into closes, so that counted
///   apart they escaped every bound (found by a review: a user's connections that each held 8 unclaimed
///   descriptors, then closed, left 1,048 closes waiting);
/// - at most ``maximumReadsPerUser`` of a user's connections read at once (``beginRead(_:)``), none while it is over
///   either bound: one read may bring 253 descriptors whatever the bounds, so that what a user holds stays under
///   ``maximumHeldPerUser`` plus that many reads' worth, however many connections it has (before, each of its
///   connections could bring 253 more past the bound);
/// - at most ``maximumThreads`` threads in all.
///
/// A user is the peer's user id as the kernel reported it (`SO_PEERCRED`), or `nil` for peers whose credentials are
/// unknown, who share one count (as ``ConnectionAdmissions`` counts them).
struct PassedDescriptorCloseQueue {
    typealias User = UInt32?

    /// The most closing threads at once.
    let maximumThreads: Int
    /// The most threads closing one user's descriptors at once.
    let maximumThreadsPerUser: Int
    /// The number of one user's waiting closes at which it is over its bound.
    let maximumWaitingPerUser: Int
    /// How long a user over its bound must go without a close ending to be stalled.
    let stallTime: Duration
    /// The most reads of one user's connections at once.
    let maximumReadsPerUser: Int
    /// The most descriptors of one user's, received and not taken plus waiting closes, before its reads pause.
    let maximumHeldPerUser: Int

    private struct UserCloses {
        /// In the order they came; taken from the front, in constant time however long it grows (an array's
        /// `removeFirst` moved the rest each time, and a backlog of thousands made every close slower).
        var queue = CircularBuffer<Int32>()
        var closing = 0
        /// When a close of the user's last ended, or its first waiting one was queued.
        var progress: ContinuousClock.Instant
        var waiting: Int { self.queue.count + self.closing }
    }

    private var users: [User: UserCloses] = [:]
    /// The reads of each user's connections under way (``beginRead(_:)``); a user with none has no entry.
    private var reading: [User: Int] = [:]
    /// The descriptors each user's connections received and the handler has not taken (``adjustHeld(_:of:)``); a
    /// user with none has no entry.
    private var held: [User: Int] = [:]
    /// The users with queued descriptors, in the order of their turns.
    private var turns: [User] = []
    /// The closing threads running (started, or about to be).
    private(set) var threads = 0
    /// The threads in the middle of a close.
    private(set) var busy = 0

    init(
        maximumThreads: Int,
        maximumThreadsPerUser: Int,
        maximumWaitingPerUser: Int,
        stallTime: Duration,
        maximumReadsPerUser: Int,
        maximumHeldPerUser: Int
    ) {
        self.maximumThreads = maximumThreads
        self.maximumThreadsPerUser = maximumThreadsPerUser
        self.maximumWaitingPerUser = maximumWaitingPerUser
        self.stallTime = stallTime
        self.maximumReadsPerUser = maximumReadsPerUser
        self.maximumHeldPerUser = maximumHeldPerUser
    }

    /// How many closes of `user`'s descriptors wait: queued, or running on a thread.
    func waiting(by user: User) -> Int { self.users[user]?.waiting ?? 0 }

    /// Whether `user` has ``maximumWaitingPerUser`` or more closes waiting.
    func isOverBound(_ user: User) -> Bool { self.waiting(by: user) >= self.maximumWaitingPerUser }

    /// Whether `user` is over its bound and none of its closes has ended for ``stallTime`` by `now`.
    func isStalled(_ user: User, now: ContinuousClock.Instant) -> Bool {
        guard let closes = self.users[user], closes.waiting >= self.maximumWaitingPerUser else { return false }
        return closes.progress + self.stallTime <= now
    }

    /// How many reads of `user`'s connections are under way.
    func reads(by user: User) -> Int { self.reading[user] ?? 0 }

    /// How many descriptors `user`'s connections received that the handler has not taken.
    func heldDescriptors(by user: User) -> Int { max(self.held[user] ?? 0, 0) }

    /// Whether `user`'s connections read nothing now: it is over its bound of waiting closes (``isOverBound(_:)``),
    /// or its waiting closes and the descriptors its connections hold reach ``maximumHeldPerUser``.
    func isPaused(_ user: User) -> Bool {
        let waiting = self.waiting(by: user)
        return waiting >= self.maximumWaitingPerUser
            || waiting + self.heldDescriptors(by: user) >= self.maximumHeldPerUser
    }

    /// Whether a connection of `user`'s may read now: the user is not paused (``isPaused(_:)``) and fewer than
    /// ``maximumReadsPerUser`` of its reads are under way.
    func mayBeginRead(_ user: User) -> Bool {
        !self.isPaused(user) && self.reads(by: user) < self.maximumReadsPerUser
    }

    /// Counts `change` more (or, negative, fewer) descriptors that `user`'s connections received and the handler has
    /// not taken. Descriptors that go on to be closed are queued (``enqueue(_:by:now:)``) before they are counted off
    /// here, so that the user's total never dips in between. A connection passes its changes once its own lock is
    /// released, so two of them may come in either order (a close counting off what a read counted a moment before):
    /// the count may be below 0 for that moment, and counts as 0.
    /// - Returns: Whether this ended a pause of the user's (see ``isPaused(_:)``).
    mutating func adjustHeld(_ change: Int, of user: User) -> Bool {
        let wasPaused = self.isPaused(user)
        let count = (self.held[user] ?? 0) + change
        self.held[user] = count == 0 ? nil : count
        return wasPaused && !self.isPaused(user)
    }

    /// Starts a read of a connection of `user`'s, if it may (``mayBeginRead(_:)``); the caller must end it with
    /// ``endRead(_:)`` once the descriptors it brought are counted (``adjustHeld(_:of:)``) or queued to be closed, and
    /// must not wait for the peer meanwhile.
    /// - Returns: Whether the read may start.
    mutating func beginRead(_ user: User) -> Bool {
        guard self.mayBeginRead(user) else { return false }
        self.reading[user, default: 0] += 1
        return true
    }

    /// Ends a read that ``beginRead(_:)`` started.
    mutating func endRead(_ user: User) {
        let left = self.reads(by: user) - 1
        precondition(left >= 0, "endRead without beginRead")
        self.reading[user] = left == 0 ? nil : left
    }

    /// Queues `descriptors`, which `user` passed, to be closed, at `now`.
    /// - Returns: How many threads the caller must start (counted as running already; see ``threadNotStarted()``).
    mutating func enqueue(_ descriptors: [Int32], by user: User, now: ContinuousClock.Instant) -> Int {
        guard !descriptors.isEmpty else { return 0 }
        if self.users[user]?.queue.isEmpty ?? true { self.turns.append(user) }
        let wasOver = self.isOverBound(user)
        self.users[user, default: UserCloses(progress: now)].queue.append(contentsOf: descriptors)
        // Its stall time counts from when it went over its bound: a close that has waited since long before (one
        // slow close) does not make a burst that then drains look stalled (found by a review).
        if !wasOver && self.isOverBound(user) { self.users[user]!.progress = now }
        return self.threadsToStart()
    }

    /// The next descriptor for a closing thread to close: the first of the first user in turn with fewer than
    /// ``maximumThreadsPerUser`` closes running, who then goes to the end of the turns.
    /// - Returns: The descriptor and its user, and how many more threads the caller must start (so that a descriptor
    ///   that may be taken never waits behind this close); `nil` when there is none to take: the thread ends, and is
    ///   counted off.
    mutating func next() -> (descriptor: Int32, user: User, threadsToStart: Int)? {
        guard let turn = self.turns.firstIndex(where: { self.users[$0]!.closing < self.maximumThreadsPerUser }) else {
            self.threads -= 1
            return nil
        }
        let user = self.turns.remove(at: turn)
        let descriptor = self.users[user]!.queue.removeFirst()
        self.users[user]!.closing += 1
        if !self.users[user]!.queue.isEmpty { self.turns.append(user) }
        self.busy += 1
        return (descriptor, user, self.threadsToStart())
    }

    /// A close of `user`'s descriptor ended, at `now`.
    /// - Returns: Whether this ended a pause of the user's (see ``isPaused(_:)``).
    mutating func closed(by user: User, now: ContinuousClock.Instant) -> Bool {
        self.busy -= 1
        let wasPaused = self.isPaused(user)
        self.users[user]!.closing -= 1
        self.users[user]!.progress = now
        if self.users[user]!.waiting == 0 { self.users[user] = nil }
        return wasPaused && !self.isPaused(user)
    }

    /// A thread that ``enqueue(_:by:now:)`` or ``next()`` asked for could not be started (the process is at its
    /// limit of threads): the next call asks again, and so does ``threadsWanted()``.
    mutating func threadNotStarted() {
        self.threads -= 1
    }

    /// Counts as running, and returns, the threads to start now so that every descriptor that may be taken has a
    /// thread (after some could not be started).
    mutating func threadsWanted() -> Int {
        self.threadsToStart()
    }

    /// Counts as running, and returns, the threads to start so that every descriptor that may be taken now has a
    /// thread that is not in the middle of a close, within ``maximumThreads``.
    private mutating func threadsToStart() -> Int {
        var takeable = 0
        for user in self.turns {
            let closes = self.users[user]!
            takeable += min(closes.queue.count, max(self.maximumThreadsPerUser - closes.closing, 0))
        }
        let free = self.threads - self.busy
        let starting = max(min(takeable - free, self.maximumThreads - self.threads), 0)
        self.threads += starting
        return starting
    }
}
