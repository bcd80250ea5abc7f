import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The last resort of the commands that run until SIGINT or SIGTERM (`watch`, `listen --connect`): on the signal they
/// cancel their work and return, and ``arm(after:)`` makes sure that they do. Should they not within the grace
/// period (their event loop blocked writing to a standard output nobody reads, a paused `| less`, so that the
/// connection can be neither cancelled nor closed), the process exits at once with status 0, as the clean stop would,
/// and the kernel's close of its socket tells the server. As a process blocked in `write(2)` with SIGTERM at its
/// default action would end.
enum ForcedExit {
    /// Ends the process with status 0 after `grace` (2 s by default) unless it has exited by then. `_exit(2)`, not
    /// `exit(3)`: nothing buffered is flushed, since a flush to the full pipe would block too.
    static func arm(after grace: Duration = .seconds(2)) {
        let seconds = Double(grace.components.seconds) + Double(grace.components.attoseconds) / 1e18
        // A thread of its own: the cooperative pool's threads and the event loop's may all be waiting on the pipe.
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: seconds)
            _exit(0)
        }
    }
}
