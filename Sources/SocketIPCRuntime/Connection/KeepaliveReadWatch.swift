/// Whether the peer read any of this side's bytes while a keepalive ping waits for its pong: the kernel's count of
/// what the peer holds unread (`TIOCOUTQ`, ``Connection/unreadBytes()``) can only fall when the peer reads, so a
/// fall between this side's writes is proof of life.
///
/// The count is the memory of the queued buffers, not their bytes: a write of 10 bytes costs about 768. Comparing it
/// with the bytes written over a whole timeout cannot tell a peer that reads a little of a growing backlog from one
/// that reads nothing (found by a review: a client reading 50 small replies a second of the 100 it was sent was cut off
/// as frozen). So while a ping is out, each write looks at the count just before it and just after it; only the peer
/// changes it in between. Touched on the event loop only.
final class KeepaliveReadWatch: @unchecked Sendable {
    /// Whether a keepalive ping is out: writes look at the count only then (a pong normally comes within a round trip).
    @exclusivity(unchecked)
    private(set) var watching = false
    /// The count just after this side's last write (or when the watch began).
    @exclusivity(unchecked)
    private var unreadAfterLastWrite = 0
    /// Whether the count fell since the watch began, or since the last ``restart(unread:)``.
    @exclusivity(unchecked)
    private var sawRead = false

    /// A ping went out; `unread` is the count now.
    func begin(unread: Int) {
        self.watching = true
        self.sawRead = false
        self.unreadAfterLastWrite = unread
    }

    /// The pong came, or the connection closed.
    func end() {
        self.watching = false
    }

    /// This side is about to write; `unread` is the count now.
    func beforeWrite(unread: Int) {
        if unread < self.unreadAfterLastWrite { self.sawRead = true }
    }

    /// This side wrote; `unread` is the count now.
    func afterWrite(unread: Int) {
        self.unreadAfterLastWrite = unread
    }

    /// Whether the peer read since the watch began or was last restarted, `unread` being the count now.
    func peerRead(unreadNow unread: Int) -> Bool {
        self.sawRead || unread < self.unreadAfterLastWrite
    }

    /// Starts a new timeout's watch, the ping still out; `unread` is the count now.
    func restart(unread: Int) {
        self.begin(unread: unread)
    }
}
