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
    /// Descriptors the application needs besides its connections (``ServerConfiguration/reservedDescriptors``).
    var reserved = 0

    /// Descriptors left to the process's other files: an eighth of the limit, between 32 and 256, and ``reserved``.
    var reserve: Int { Self.defaultReserve(self.soft) + Self.clamped(self.reserved) }

    /// An eighth of `descriptors`, between 32 and 256.
    static func defaultReserve(_ descriptors: Int) -> Int { min(256, max(32, descriptors / 8)) }

    /// `a + b`, or `Int.max` where that overflows.
    private static func saturatingSum(_ a: Int, _ b: Int) -> Int {
        let (sum, overflows) = a.addingReportingOverflow(b)
        return overflows ? Int.max : sum
    }

    /// `reserved` within 0 and `Int32.max` (no descriptor limit is larger), so that sums with it cannot overflow.
    private static func clamped(_ reserved: Int) -> Int { min(max(0, reserved), Int(Int32.max)) }

    /// The most connections the limit can hold besides the reserve; 0 when the reserve takes it all.
    var connections: Int { max(0, self.soft - self.reserve) }

    /// Raises the soft limit, if it must and can, so that `connections` descriptors fit with the reserve, `reserved`
    /// included.
    static func raise(toFit connections: Int, reserving reserved: Int = 0) -> DescriptorLimit {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        guard getrlimit(resource, &limit) == 0 else {
            return DescriptorLimit(soft: .max, previousSoft: .max, reserved: reserved)
        }
        let soft = Int(clamping: limit.rlim_cur)
        let hard = Int(clamping: limit.rlim_max)
        // The default reserve of the raised limit, which is at most 256 above `connections` and `reserved`: so that
        // ``connections`` (which takes the default reserve of the limit it has) holds all of them afterwards.
        // Saturating: a configuration may ask for Int.max connections.
        let needed = Self.saturatingSum(connections, Self.clamped(reserved))
        let wanted = Self.saturatingSum(needed, Self.defaultReserve(Self.saturatingSum(needed, 256)))
        guard soft < wanted, soft < hard else { return DescriptorLimit(soft: soft, previousSoft: soft, reserved: reserved) }
        var raised = limit
        raised.rlim_cur = rlim_t(min(wanted, hard))
        guard setrlimit(resource, &raised) == 0 else {
            return DescriptorLimit(soft: soft, previousSoft: soft, reserved: reserved)
        }
        return DescriptorLimit(soft: Int(clamping: raised.rlim_cur), previousSoft: soft, reserved: reserved)
    }
}
