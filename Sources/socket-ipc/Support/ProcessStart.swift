#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What the process was given when it started, kept before any server changes it, and the repair of what it was
/// given broken.
enum ProcessStart {
    /// The soft `RLIMIT_NOFILE` the process started with, or `nil` where `getrlimit` fails.
    ///
    /// A server raises its soft limit toward the hard one to hold its connections (as Go's runtime does at start);
    /// the commands `serve --exec` runs get this one back, as Go's `os/exec` and systemd give their children the
    /// original soft limit: a program that uses `select(2)` cannot take descriptors above `FD_SETSIZE` (1024).
    /// Read once, by ``prepare()`` at the start of `main`.
    static let descriptorSoftLimit: rlim_t? = {
        var limit = rlimit()
        #if os(Linux)
            let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
            let resource = RLIMIT_NOFILE
        #endif
        return getrlimit(resource, &limit) == 0 ? limit.rlim_cur : nil
    }()

    /// Run first thing in `main`: notes the soft descriptor limit, and opens `/dev/null` on each of the standard
    /// descriptors 0, 1 and 2 that the process was started without (`cmd <&- >&- 2>&-`).
    ///
    /// Otherwise the next descriptors opened (SwiftNIO's epoll, eventfd and timerfd) would take those numbers, and
    /// every line written to standard output or error would go into an event loop's descriptors; daemons and
    /// systemd fill them with `/dev/null` for the same reason.
    static func prepare() {
        _ = Self.descriptorSoftLimit
        for descriptor: Int32 in 0...2 where fcntl(descriptor, F_GETFD) == -1 && errno == EBADF {
            // The lowest free number: this one, since those below it are open by now.
            let opened = open("/dev/null", O_RDWR)
            if opened >= 0, opened != descriptor { close(opened) }
        }
    }
}
