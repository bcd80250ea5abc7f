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

/// A connection's side of descriptor passing: its relay, the descriptors announced for the next frame, and those of
/// replies waiting for their requester.
final class DescriptorPassing: Sendable {
    /// The relay that carries the connection's bytes and descriptors.
    let relay: DescriptorRelay
    /// The descriptors a descriptors frame announced for the frame after it; touched on the event loop only.
    private let announced = Mutex<[Int32]?>(nil)
    /// The groups of the descriptors frames held while the connection is paused for requests, in order: taken from
    /// the relay when the frame was held, so that later groups (a reply's) can be taken meanwhile, and announced
    /// again, in order, when the held frames are handed out; touched on the event loop only.
    private let held = Mutex<[[Int32]]>([])
    /// How many announced groups frames took so far; touched on the event loop only.
    private let announcedTaken = Atomic<UInt64>(0)
    /// The requests made with ``Connection/request(_:descriptors:timeout:)`` that wait for their reply, and the
    /// descriptors their reply brought once it came.
    private let replies = Mutex<[UInt32: ReceivedDescriptors]>([:])

    init(relay: DescriptorRelay) {
        self.relay = relay
    }

    /// A descriptors frame announced `count` descriptors: takes them from the relay for the next frame.
    ///
    /// They no longer count as held on the peer's user's account (``PassedDescriptorCloser/adjustHeld(_:of:)``): the
    /// frame that takes them may need more reads (a payload larger than a read), which a paused user does not get, so
    /// that counting them paused honest users for good mid-message (found by a review of a version that counted
    /// them). A peer that never sends that frame leaves them uncounted until its connection closes them: at most one
    /// message's maximum per connection (SECURITY.md, "Known limits").
    /// - Returns: Why the peer broke the protocol, if it did.
    func announce(_ count: Int) -> SocketIPCError? {
        // Frames held while paused are handed out first when the pause ends, so their groups come first.
        if let held = self.held.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            self.relay.releaseHeld(held.count)
            return self.announce(held, count: count)
        }
        return self.announce(self.relay.takeClaimed(), count: count)
    }

    /// While paused for requests, a descriptors frame announced `count` descriptors for a frame that is held with it:
    /// takes them from the relay now and keeps them for ``announce(_:)`` when the held frames are handed out.
    /// - Returns: Why the peer broke the protocol, if it did.
    /// They still count against the relay's in-flight limit until then, so that the relay reads no more descriptors
    /// past it.
    func hold(_ count: Int) -> SocketIPCError? {
        guard let group = self.relay.takeClaimed(holding: true) else {
            return SocketIPCError(.protocolViolation, "a descriptors frame came without the descriptors it announced")
        }
        guard group.count == count else {
            self.relay.closeReceived(group)
            self.relay.releaseHeld(group.count)
            return SocketIPCError(.protocolViolation, "a descriptors frame announced \(count) descriptors, not \(group.count)")
        }
        self.held.withLock { $0.append(group) }
        return nil
    }

    /// How many groups ``hold(_:)`` keeps that no frame has taken yet.
    var heldCount: Int { self.held.withLock { $0.count } }

    /// While paused, a descriptors frame followed by a reply: takes its group from the relay (not from the held ones,
    /// which come before it in the relay but after it in what is handed out).
    func announceFromRelay(_ count: Int) -> SocketIPCError? {
        self.announce(self.relay.takeClaimed(), count: count)
    }

    private func announce(_ group: [Int32]?, count: Int) -> SocketIPCError? {
        guard let group else {
            return SocketIPCError(.protocolViolation, "a descriptors frame came without the descriptors it announced")
        }
        let earlier = self.announced.withLock { announced in
            defer { announced = group }
            return announced
        }
        if let earlier {
            self.relay.closeReceived(earlier)
            return SocketIPCError(.protocolViolation, "two descriptors frames came in a row")
        }
        guard group.count == count else {
            return SocketIPCError(.protocolViolation, "a descriptors frame announced \(count) descriptors, not \(group.count)")
        }
        return nil
    }

    /// Whether a descriptors frame announced descriptors that the next frame has not taken yet.
    var hasAnnounced: Bool { self.announced.withLock { $0 != nil } }

    /// Takes the descriptors announced for the frame just decoded, if any.
    @inline(__always)
    func takeAnnounced() -> ReceivedDescriptors? {
        guard let group = self.announced.withLock({ $0.take() }) else { return nil }
        self.announcedTaken.wrappingAdd(1, ordering: .relaxed)
        return ReceivedDescriptors(group, passedBy: self.relay.passedBy)
    }

    /// Whether descriptors the peer passed wait for a frame to take them (in the relay, or announced), and a count
    /// that grows whenever some move on: descriptors that wait while it stays the same are stuck.
    func pendingDescriptors() -> (waiting: Bool, progress: UInt64) {
        let relay = self.relay.pendingDescriptors()
        let announced = self.announced.withLock { $0 != nil } || self.held.withLock { !$0.isEmpty }
        return (relay.waiting || announced, relay.movedOn &+ self.announcedTaken.load(ordering: .relaxed))
    }

    /// Closes descriptors announced and not handed out (the connection closed).
    func closeAnnounced() {
        if let group = self.announced.withLock({ $0.take() }) { self.relay.closeReceived(group) }
        for group in self.held.withLock({ held in
            defer { held = [] }
            return held
        }) {
            // Queued to be closed before counted off, so that the user's account never dips in between.
            self.relay.closeReceived(group)
            self.relay.releaseHeld(group.count)
        }
    }

    /// A request that takes the descriptors of its reply is about to be sent as `id`.
    func expectReply(_ id: UInt32) {
        self.replies.withLock { $0[id] = ReceivedDescriptors.none }
    }

    /// The reply to `id` brought `descriptors`: kept for its requester, or closed when nobody waits for them.
    func replyArrived(_ id: UInt32, descriptors: ReceivedDescriptors) {
        let kept = self.replies.withLock { replies -> Bool in
            guard replies[id] != nil else { return false }
            replies[id] = descriptors
            return true
        }
        if !kept { descriptors.close() }
    }

    /// The requester of `id` is done waiting: returns what its reply brought (nothing if it failed).
    func takeReply(_ id: UInt32) -> ReceivedDescriptors {
        self.replies.withLock { $0.removeValue(forKey: id) } ?? .none
    }

    /// Duplicates `descriptors` (close-on-exec) so that the caller may close its own at once; the copies go with the
    /// frame and are closed once sent.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` for more than `maximum`, or `systemCall` when one
    ///   cannot be duplicated (`EBADF`: not open; `EMFILE`).
    static func duplicate(_ descriptors: [Int32], maximum: Int) throws -> [Int32] {
        guard !descriptors.isEmpty, descriptors.count <= maximum else {
            throw SocketIPCError(
                .invalidConfiguration,
                "a message carries 1 to \(maximum) descriptors (ConnectionOptions.maximumDescriptorsPerMessage), "
                    + "not \(descriptors.count)"
            )
        }
        var copies: [Int32] = []
        copies.reserveCapacity(descriptors.count)
        for descriptor in descriptors {
            let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
            if copy < 0 {
                let code = errno
                DescriptorRelay.closeAll(copies)
                throw SocketIPCError.systemCall("fcntl(F_DUPFD_CLOEXEC) of descriptor \(descriptor)", errno: code)
            }
            copies.append(copy)
        }
        return copies
    }
}
