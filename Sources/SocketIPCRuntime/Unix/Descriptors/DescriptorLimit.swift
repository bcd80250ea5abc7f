#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit of open file descriptors (`RLIMIT_NOFILE`), and the connection limits it can really hold.
///
/// A server whose connection limits exceed its descriptors fails `accept` with `EMFILE` for everyone once one user
/// has opened enough connections: the per-user limit would then protect nobody. So the server first raises its soft
/// limit toward the hard one as far as its limits need (as Go's runtime does at start for every program), and where
/// the hard limit is still too low, serves fewer connections: all but a reserve of descriptors for the process's
/// own files, and at most half of them for one user.
struct DescriptorLimit {
    /// The soft limit, after raising it.
    let soft: Int
    /// The soft limit before.
    let previousSoft: Int

    /// Descriptors left to the process's other files: an eighth of the limit, between 32 and 256.
    var reserve: Int { min(256, max(32, self.soft / 8)) }

    /// The most connections the limit can hold besides the reserve.
    var connections: Int { max(1, self.soft - self.reserve) }

    /// Raises the soft limit, if it must and can, so that `connections` fit with the reserve.
    static func raise(toFit connections: Int) -> DescriptorLimit {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        guard getrlimit(resource, &limit) == 0 else { return DescriptorLimit(soft: .max, previousSoft: .max) }
        let soft = Int(clamping: limit.rlim_cur)
        let hard = Int(clamping: limit.rlim_max)
        let wanted = connections + min(256, max(32, connections / 8))
        guard soft < wanted, soft < hard else { return DescriptorLimit(soft: soft, previousSoft: soft) }
        var raised = limit
        raised.rlim_cur = rlim_t(min(wanted, hard))
        guard setrlimit(resource, &raised) == 0 else { return DescriptorLimit(soft: soft, previousSoft: soft) }
        return DescriptorLimit(soft: Int(clamping: raised.rlim_cur), previousSoft: soft)
    }
}
