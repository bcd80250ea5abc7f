#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The listening sockets a service manager passed to this process: systemd's socket activation, as
/// `sd_listen_fds_with_names(3)` defines it, and (untested, compiled in principle) launchd's
/// `launch_activate_socket(3)`.
///
/// With systemd, a `.socket` unit listens on the path and starts the service on the first connection; the service
/// finds the sockets as descriptors 3, 4, … (`SD_LISTEN_FDS_START`), their count in `LISTEN_FDS`, its own pid in
/// `LISTEN_PID` and their names in `LISTEN_FDNAMES`. Serve one with ``ServerConfiguration/init(inheritedSocket:)``:
///
/// ```swift
/// if let socket = try SocketActivation.listeningSockets().first {
///     let server = Server.service(configuration: .init(inheritedSocket: socket), router: router)
/// }
/// ```
public enum SocketActivation {
    /// The first descriptor passed: 3 (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// Takes the listening sockets passed by systemd: descriptors `3 ..< 3 + LISTEN_FDS`, with the names of
    /// `LISTEN_FDNAMES`, if `LISTEN_PID` is this process. Marks them close-on-exec and, by default, removes the three
    /// variables from the environment so that child processes do not take them too (as `sd_listen_fds(1)` does).
    /// - Parameter unsettingEnvironment: Whether to remove `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`; default
    ///   `true`.
    /// - Returns: The sockets, in descriptor order; empty when the variables are not set or are for another process.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` when `LISTEN_FDS` is not a count, counts a
    ///   descriptor that is not open, or `LISTEN_FDNAMES` does not name as many sockets.
    public static func listeningSockets(unsettingEnvironment: Bool = true) throws -> [InheritedSocket] {
        let environment = (
            pid: Self.variable("LISTEN_PID"), count: Self.variable("LISTEN_FDS"), names: Self.variable("LISTEN_FDNAMES")
        )
        defer {
            if unsettingEnvironment {
                for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
            }
        }
        return try Self.sockets(pid: environment.pid, count: environment.count, names: environment.names, me: getpid())
    }

    /// The sockets the variables describe, for the process `me`: the rules of `sd_listen_fds_with_names(3)`.
    package static func sockets(pid: String?, count: String?, names: String?, me: pid_t) throws -> [InheritedSocket] {
        guard let count else { return [] }
        // systemd always sets LISTEN_PID; a value for another process (a parent's, inherited) is not ours.
        guard let pid, let owner = pid_t(pid), owner == me else { return [] }
        // At most as many as this process may have open (RLIMIT_NOFILE): a larger count cannot be real.
        var limit = rlimit()
        var most: Int64 = 1 << 20
        if getrlimit(Self.openFilesResource, &limit) == 0 {
            most = Int64(min(UInt64(limit.rlim_cur), UInt64(Int32.max)))
        }
        guard let number = Int32(count), number >= 0, Int64(number) <= most - Int64(Self.firstDescriptor) else {
            throw SocketIPCError(
                .invalidConfiguration,
                "LISTEN_FDS is not a count of descriptors this process can have (at most \(most - 3)): \(count)"
            )
        }
        let labels: [String]
        if let names {
            labels = names.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard labels.count == Int(number) else {
                throw SocketIPCError(
                    .invalidConfiguration,
                    "LISTEN_FDNAMES names \(labels.count) sockets but LISTEN_FDS passes \(number)"
                )
            }
        } else {
            labels = Array(repeating: "unknown", count: Int(number))
        }
        return try (0..<number).map { index in
            let descriptor = Self.firstDescriptor + index
            // As sd_listen_fds(3), which fails with the error of this fcntl: a count past the descriptors passed
            // would otherwise serve whatever this process opens there later.
            guard fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else {
                throw SocketIPCError(
                    .invalidConfiguration,
                    "LISTEN_FDS passes \(number) descriptors from 3, but descriptor \(descriptor) is not open"
                )
            }
            return InheritedSocket(descriptor: descriptor, name: labels[Int(index)])
        }
    }

    /// The socket named `name` (systemd's `FileDescriptorName=`), taken as ``listeningSockets(unsettingEnvironment:)``
    /// takes them; `nil` when there is none of that name.
    public static func listeningSocket(named name: String) throws -> InheritedSocket? {
        try Self.listeningSockets().first { $0.name == name }
    }

    #if canImport(Darwin)
    /// The sockets launchd passes for the `Sockets` entry `name` of the job's property list, from
    /// `launch_activate_socket(3)`. Untested: written for Darwin, compiled in principle.
    /// - Throws: `SocketIPCError` with code `invalidConfiguration` when launchd has no such entry for this job.
    public static func launchdSockets(named name: String) throws -> [InheritedSocket] {
        typealias Activate = @convention(c) (
            UnsafePointer<CChar>, UnsafeMutablePointer<UnsafeMutablePointer<Int32>?>, UnsafeMutablePointer<Int>
        ) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: -2), "launch_activate_socket") else { return [] }
        let activate = unsafeBitCast(symbol, to: Activate.self)
        var descriptors: UnsafeMutablePointer<Int32>? = nil
        var count = 0
        let result = activate(name, &descriptors, &count)
        guard result == 0, let descriptors else {
            throw SocketIPCError(.invalidConfiguration, "launchd passed no socket named \(name) (error \(result))")
        }
        defer { free(descriptors) }
        return (0..<count).map { InheritedSocket(descriptor: descriptors[$0], name: name) }
    }
    #endif

    /// `RLIMIT_NOFILE`, as `getrlimit` takes it here.
    #if canImport(Glibc)
    private static let openFilesResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let openFilesResource = RLIMIT_NOFILE
    #endif

    private static func variable(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
