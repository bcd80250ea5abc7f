import Foundation
import Synchronization

/// Serializes `Process.run()` across every test of the package (they all run in one process, in parallel).
private let launches = Mutex(())

/// Starts `process`, one launch at a time: swift-corelibs-foundation's `Process.run()` reads shared process state
/// while it sets up the child, and concurrent launches from parallel tests have crashed inside it (a `memmove` in
/// `run()`), taking every other running test down with them.
/// - Throws: What `Process.run()` throws.
public func launchSerialized(_ process: Process) throws {
    try launches.withLock { _ in try process.run() }
}

/// Runs `body`, which starts a process by other means than `Process` (`posix_spawn`), under the same lock as
/// ``launchSerialized(_:)``: no other launch then runs between making descriptors and marking them close-on-exec.
public func withLaunchLock<Result>(_ body: () throws -> Result) rethrows -> Result {
    try launches.withLock { _ in try body() }
}
