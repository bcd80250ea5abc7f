#if os(Linux)
import CSocketIPCLinux
@testable import SocketIPCRuntime
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The peek at what a peer of an activated socket queued before the server started (``QueuedDescriptors``) copies no
/// more of its descriptors into the server than its user's bound allows (found by a review: peers connected before
/// the server started, each passing 253 descriptors, filled the server's table of 16,384 with 70 connections, before
/// any bound of the user's was looked at, and no other user was served).
@Suite("Descriptors queued before activation: the peek's copies are bounded", .timeLimit(.minutes(1)))
struct QueuedDescriptorsPeekTests {
    /// A connected pair whose second end has queued one byte carrying `count` copies of a descriptor of `/dev/null`.
    static func pairWithQueuedDescriptors(_ count: Int) throws -> (receiver: Int32, sender: Int32) {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        try #require(null >= 0)
        defer { close(null) }
        let descriptors = [Int32](repeating: null, count: count)
        let sent = [UInt8(0x61)].withUnsafeBytes { bytes in
            descriptors.withUnsafeBufferPointer {
                csocketipc_send_with_descriptors(pair[1], bytes.baseAddress, 1, $0.baseAddress, Int32(count))
            }
        }
        try #require(sent == 1, "errno \(errno)")
        return (pair[0], pair[1])
    }

    @Test("a peek with room for none or 4 copies takes at most that many, says that descriptors came, and leaves the message whole")
    func peekTakesAtMostItsRoom() throws {
        let (receiver, sender) = try Self.pairWithQueuedDescriptors(100)
        defer {
            close(receiver)
            close(sender)
        }
        var byte: UInt8 = 0
        for room: Int32 in [0, 4] {
            var descriptors = [Int32](repeating: -1, count: Int(CSOCKETIPC_MAX_DESCRIPTORS))
            var count: Int32 = -1
            var truncated: Int32 = -1
            let peeked = descriptors.withUnsafeMutableBufferPointer {
                csocketipc_peek_with_descriptors(receiver, &byte, 1, $0.baseAddress, room, &count, &truncated)
            }
            #expect(peeked == 1)
            #expect(count <= room, "a peek with room for \(room) copied \(count)")
            #expect(truncated == 2, "the peek did not say that descriptors came (room \(room))")
            for descriptor in descriptors.prefix(Int(max(count, 0))) { close(descriptor) }
        }
        // The message and all its descriptors are still queued for a read.
        var descriptors = [Int32](repeating: -1, count: Int(CSOCKETIPC_MAX_DESCRIPTORS))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let read = descriptors.withUnsafeMutableBufferPointer {
            csocketipc_receive_with_descriptors(
                receiver, &byte, 1, $0.baseAddress, CSOCKETIPC_MAX_DESCRIPTORS, &count, &truncated, Int32(MSG_DONTWAIT))
        }
        #expect(read == 1)
        #expect(count == 100)
        for descriptor in descriptors.prefix(Int(max(count, 0))) { close(descriptor) }
    }

    @Test("a paused user's peek has room for no copy, and its connection that passed descriptors is refused all the same")
    func pausedUserIsRefusedWithoutCopies() throws {
        let user: UInt32 = 4_000_000_000 + UInt32.random(in: 0..<1_000_000)
        #expect(PassedDescriptorCloser.peekRoom(for: user) == Int(CSOCKETIPC_MAX_DESCRIPTORS))
        PassedDescriptorCloser.adjustHeld(PassedDescriptorCloser.maximumHeldPerUser - 10, of: user)
        #expect(PassedDescriptorCloser.peekRoom(for: user) == 10)
        PassedDescriptorCloser.adjustHeld(10, of: user)
        defer { PassedDescriptorCloser.adjustHeld(-PassedDescriptorCloser.maximumHeldPerUser, of: user) }
        #expect(PassedDescriptorCloser.peekRoom(for: user) == 0)
        let (receiver, sender) = try Self.pairWithQueuedDescriptors(100)
        defer { close(sender) }
        // `refuse` hands the refused socket to the closer: not closed here.
        #expect(QueuedDescriptors.refuse(receiver, passedBy: user) == .passedDescriptors)
    }
}
#endif
