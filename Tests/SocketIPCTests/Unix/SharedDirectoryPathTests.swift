import Foundation
import SocketIPCTesting
import Testing

@testable import SocketIPCRuntime

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Which socket paths another user could have made: the client asks the server there who it is
/// (`SharedDirectoryPath`, used by `SocketConnector.connect`).
@Suite("Paths another user could have made", .enabled(if: OtherUser.canOwnFiles, "needs root to make files of another user"))
struct SharedDirectoryPathTests {
    @Test("a name in a directory any user may write to is anyone's unless this user or root owns it (sticky), or at all (not sticky); a link there counts as its owner's, and links are followed; a private directory, or a group-writable one, is not counted")
    func cases() async throws {
        try await withTemporarySocketDirectory { directory in
            chmod(directory, 0o755)
            let sticky = directory + "/sticky"
            try makeDirectory(sticky, mode: 0o1777)
            let open = directory + "/open"
            try makeDirectory(open, mode: 0o777)
            let group = directory + "/group"
            try makeDirectory(group, mode: 0o770)
            let mine = directory + "/mine"
            try makeDirectory(mine, mode: 0o700)
            // Entries of the other user, and of this one, in the sticky directory.
            try makeStaleSocket(at: sticky + "/theirs.sock")
            #expect(lchown(sticky + "/theirs.sock", OtherUser.uid, OtherUser.gid) == 0)
            try makeStaleSocket(at: sticky + "/ours.sock")
            try makeDirectory(sticky + "/theirs", mode: 0o755)
            #expect(chown(sticky + "/theirs", OtherUser.uid, OtherUser.gid) == 0)
            try makeDirectory(sticky + "/ours", mode: 0o755)
            // The sockets the client connected to, of this user.
            for socket in [sticky + "/ours/s.sock", group + "/s.sock", mine + "/s.sock", open + "/s.sock"] {
                try makeStaleSocket(at: socket)
            }
            // A link of the other user's in the sticky directory, to this user's private directory.
            #expect(symlink(mine, sticky + "/link") == 0)
            #expect(lchown(sticky + "/link", OtherUser.uid, OtherUser.gid) == 0)

            #expect(SharedDirectoryPath.openToOthers(on: sticky + "/ours.sock") == nil)
            #expect(
                SharedDirectoryPath.openToOthers(on: sticky + "/theirs.sock") == sticky,
                "after a socket of ours in the same directory: another name there is still anyone's"
            )
            #expect(
                SharedDirectoryPath.openToOthers(on: sticky + "/gone.sock") == sticky,
                "called after the connect: a name gone since counts as another user's"
            )
            #expect(SharedDirectoryPath.openToOthers(on: sticky + "/theirs/s.sock") == sticky, "a directory they made")
            #expect(SharedDirectoryPath.openToOthers(on: sticky + "/ours/s.sock") == nil)
            #expect(SharedDirectoryPath.openToOthers(on: sticky + "/link/s.sock") == sticky, "a link they made")
            #expect(SharedDirectoryPath.openToOthers(on: sticky + "/ours/../theirs.sock") == sticky)
            #expect(SharedDirectoryPath.openToOthers(on: open + "/s.sock") == open, "not sticky: any entry may be replaced")
            #expect(SharedDirectoryPath.openToOthers(on: group + "/s.sock") == nil)
            #expect(SharedDirectoryPath.openToOthers(on: mine + "/s.sock") == nil)
            // Known closed now, and looked at alone next time: replaced by a directory others may write to, it is
            // walked again.
            #expect(rename(mine, directory + "/mine-before") == 0)
            try makeDirectory(mine, mode: 0o777)
            try makeStaleSocket(at: mine + "/s.sock")
            #expect(SharedDirectoryPath.openToOthers(on: mine + "/s.sock") == mine)
            #expect(unlink(mine + "/s.sock") == 0 && rmdir(mine) == 0)
            #expect(rename(directory + "/mine-before", mine) == 0)
            // A link of this user's, in a private directory, to a directory any user may write to.
            #expect(symlink(open, mine + "/to-open") == 0)
            #expect(SharedDirectoryPath.openToOthers(on: mine + "/to-open/s.sock") == open)
            // The socket's own name a link of this user's, in a private directory, to a socket of theirs.
            #expect(symlink(sticky + "/theirs.sock", mine + "/app.sock") == 0)
            #expect(SharedDirectoryPath.openToOthers(on: mine + "/app.sock") == sticky)
        }
    }

    @Test("a directory known closed that is now another user's, with the same inode, is walked again (found by a review: a directory made again by another user at the same path got the same inode number)")
    func knownDirectoryChangedOwner() async throws {
        try await withTemporarySocketDirectory { directory in
            chmod(directory, 0o755)
            let sticky = directory + "/sticky"
            try makeDirectory(sticky, mode: 0o1777)
            let private_ = sticky + "/app"
            try makeDirectory(private_, mode: 0o700)
            try makeStaleSocket(at: private_ + "/s.sock")
            #expect(SharedDirectoryPath.openToOthers(on: private_ + "/s.sock") == nil)
            #expect(SharedDirectoryPath.openToOthers(on: private_ + "/s.sock") == nil, "known closed: looked at alone")
            // The same directory (the same device and inode), now the other user's: they could have put any socket
            // in it. As a directory removed and made again by them, when the file system reuses its inode number.
            #expect(chown(private_, OtherUser.uid, OtherUser.gid) == 0)
            #expect(SharedDirectoryPath.openToOthers(on: private_ + "/s.sock") == sticky)
        }
    }
}
