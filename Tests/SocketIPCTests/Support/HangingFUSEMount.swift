// Linux only: FUSE, mount(2) and umount2(2).
#if os(Linux)
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A FUSE file system served by this process (Linux, as root), mounted on a temporary directory: one file, `f`, whose
/// every close in this process waits for good, since the file system never answers its `FUSE_FLUSH` (another
/// process's, such as a child forked by another test that inherited the descriptor until its `exec`, is answered). It is what a hostile peer that serves
/// a FUSE mount can pass (where `/dev/fuse` and `fusermount3` are open to every user, as on most desktops).
///
/// ``stop()`` answers the flushes held so far and every later one, and unmounts it (lazily): every close still waiting
/// returns. The serving thread goes on answering until the kernel ends the file system's connection, once the last
/// file on it is closed (`ENODEV`), and then closes the device. It never stops serving before that: a child forked by
/// another test holds copies of the file and of the device until its `exec`, and if that `exec` closed its copy of the
/// file while no one served the device, it would wait for good for a flush that its own copy of the device kept
/// alive, and so would the test that forked it (found in a loaded run, where that stopped every test that starts a
/// process, since starts take turns).
final class HangingFUSEMount: @unchecked Sendable {
    /// Whether one can be mounted here: root, with `/dev/fuse`.
    static var isAvailable: Bool {
        getuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0
    }

    /// The mount point.
    let directory: String
    /// The path of the file whose closes wait.
    var file: String { self.directory + "/f" }
    private let device: Int32
    /// Written to make the serving thread answer every flush (``stop()``); it polls it with the device.
    private let wake: (read: Int32, write: Int32)
    /// Signalled once the serving thread answers every flush, or has ended.
    private let answersAll = DispatchSemaphore(value: 0)

    init() throws {
        var template = Array("/tmp/sipc-fuse-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw RawSocketError.failed("mkdtemp", errno) }
        self.directory = String(cString: made)
        self.device = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard self.device >= 0 else { throw RawSocketError.failed("open /dev/fuse", errno) }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw RawSocketError.failed("pipe", errno) }
        self.wake = (ends[0], ends[1])
        let options = "fd=\(self.device),rootmode=40000,user_id=0,group_id=0,allow_other"
        guard mount("sipc-test", self.directory, "fuse", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            let code = errno
            close(self.device)
            throw RawSocketError.failed("mount fuse", code)
        }
        let device = self.device
        let wake = self.wake.read
        let answersAll = self.answersAll
        Thread {
            Self.serve(device, wake: wake, answersAll: answersAll)
            close(device)
            answersAll.signal()
        }.start()
    }

    /// Opens the file read-only. Its holder's own close waits too: close it only after ``stop()``, which is what ends
    /// the file system.
    func open() throws -> Int32 {
        let descriptor = Glibc.open(self.file, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw RawSocketError.failed("open \(self.file)", errno) }
        return descriptor
    }

    /// Answers the flushes held and every later one, and unmounts the file system: closes still waiting end, and the
    /// file system ends once every file on it is closed.
    func stop() {
        var byte: UInt8 = 1
        _ = write(self.wake.write, &byte, 1)
        self.answersAll.wait()
        // The thread no longer polls it.
        close(self.wake.read)
        close(self.wake.write)
        _ = umount2(self.directory, Int32(MNT_DETACH))
        rmdir(self.directory)
    }

    // MARK: - The file system

    private static let rootNode: UInt64 = 1
    private static let fileNode: UInt64 = 2

    /// Answers the kernel's requests until the connection ends (`ENODEV`): everything a lookup, an open and a read
    /// need, and a flush of this process only once `wake` is readable (then also those held until then, and
    /// `answersAll` is signalled).
    private static func serve(_ device: Int32, wake: Int32, answersAll: DispatchSemaphore) {
        var buffer = [UInt8](repeating: 0, count: 1 << 20 + 4096)
        var heldFlushes: [UInt64] = []
        var answering = false
        while true {
            var entries = [pollfd(fd: device, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            guard poll(&entries, answering ? 1 : 2, -1) >= 0 || errno == EINTR else { return }
            if !answering, entries[1].revents != 0 {
                answering = true
                for unique in heldFlushes { reply(device, unique, []) }
                heldFlushes = []
                answersAll.signal()
                continue
            }
            guard entries[0].revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(device, $0.baseAddress, $0.count) }
            guard count >= 40 else {
                if count < 0, errno == EINTR || errno == ENOENT || errno == EAGAIN { continue }
                return  // ENODEV: the connection has ended
            }
            var request = Reader(bytes: Array(buffer[0..<count]))
            _ = request.u32()  // length
            let opcode = request.u32()
            let unique = request.u64()
            let node = request.u64()
            _ = request.u32()  // uid
            _ = request.u32()  // gid
            let requester = request.u32()
            switch opcode {
            case 26:  // INIT: version 7.31, no options
                var out = Writer()
                out.u32(7); out.u32(31); out.u32(0); out.u32(0)
                out.u16(16); out.u16(12); out.u32(65536); out.u32(1)
                out.u16(0); out.u16(0); out.u32(0)
                out.bytes += [UInt8](repeating: 0, count: 64 - out.bytes.count)
                reply(device, unique, out.bytes)
            case 1:  // LOOKUP
                let name = Array(buffer[40..<count].prefix { $0 != 0 })
                guard name == Array("f".utf8) else {
                    reply(device, unique, [], error: -ENOENT)
                    continue
                }
                var out = Writer()
                out.u64(fileNode); out.u64(0); out.u64(0); out.u64(0); out.u32(0); out.u32(0)
                out.bytes += attributes(node: fileNode)
                reply(device, unique, out.bytes)
            case 3:  // GETATTR
                var out = Writer()
                out.u64(0); out.u32(0); out.u32(0)
                out.bytes += attributes(node: node)
                reply(device, unique, out.bytes)
            case 14, 27:  // OPEN, OPENDIR
                var out = Writer()
                out.u64(1); out.u32(0); out.u32(0)
                reply(device, unique, out.bytes)
            case 15:  // READ
                reply(device, unique, Array("data".utf8))
            case 18, 29, 34:  // RELEASE, RELEASEDIR, ACCESS
                reply(device, unique, [])
            case 25 where answering || access("/proc/self/task/\(requester)", F_OK) != 0:
                // The flush of another process: a child that another test forked, closing the descriptors it
                // inherited as it executes its program (they are close-on-exec). Answered, or that child would wait
                // for good (found in a CI check, where such children held up the whole run).
                reply(device, unique, [])
            case 25:  // FLUSH of this process: held until stop()
                heldFlushes.append(unique)
            case 2, 36, 42:  // FORGET, INTERRUPT, BATCH_FORGET (no answer)
                continue
            default:
                reply(device, unique, [], error: -ENOSYS)
            }
        }
    }

    /// `struct fuse_attr` of the root directory or of the file (4 bytes).
    private static func attributes(node: UInt64) -> [UInt8] {
        var out = Writer()
        let isRoot = node == rootNode
        out.u64(node); out.u64(isRoot ? 0 : 4); out.u64(1); out.u64(0); out.u64(0); out.u64(0)
        out.u32(0); out.u32(0); out.u32(0)
        out.u32(isRoot ? 0o40755 : 0o100644); out.u32(1); out.u32(0); out.u32(0); out.u32(0); out.u32(4096); out.u32(0)
        return out.bytes
    }

    private static func reply(_ device: Int32, _ unique: UInt64, _ body: [UInt8], error: Int32 = 0) {
        var out = Writer()
        out.u32(UInt32(16 + body.count)); out.u32(UInt32(bitPattern: error)); out.u64(unique)
        out.bytes += body
        _ = out.bytes.withUnsafeBytes { write(device, $0.baseAddress, $0.count) }
    }

    private struct Reader {
        var bytes: [UInt8]
        var offset = 0
        mutating func u32() -> UInt32 {
            defer { self.offset += 4 }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(self.bytes[self.offset + $1]) << (8 * $1) }
        }
        mutating func u64() -> UInt64 {
            UInt64(self.u32()) | UInt64(self.u32()) << 32
        }
    }

    private struct Writer {
        var bytes: [UInt8] = []
        mutating func u16(_ value: UInt16) { self.bytes += withUnsafeBytes(of: value.littleEndian, Array.init) }
        mutating func u32(_ value: UInt32) { self.bytes += withUnsafeBytes(of: value.littleEndian, Array.init) }
        mutating func u64(_ value: UInt64) { self.bytes += withUnsafeBytes(of: value.littleEndian, Array.init) }
    }
}
#endif
