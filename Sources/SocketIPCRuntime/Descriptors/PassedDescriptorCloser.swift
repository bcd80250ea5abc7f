#if os(Linux)
import CSocketIPCLinux
import Synchronization

/// Closes descriptors a peer passed whose last close may wait for something the peer controls
/// (``csocketipc_close_may_wait``), on threads of its own, never on the calling thread (an event loop, most often).
///
/// - A passed Unix-domain socket may hold, in its receive queue, descriptors in flight that no one else holds: a TCP
///   socket with `SO_LINGER` on and a send queue its peer never drains, passed into it and closed by the sender. Their
///   last close happens with the socket's, in the thread that closes it, and waits out the linger time the peer chose
///   (found by a review: such a socket, passed to `serve`, stopped an event loop, and every connection on it, for as
///   long as the peer kept the TCP connection open). `SO_LINGER` can be turned off only on a socket one holds
///   (``closePassedDescriptors(_:)``), not on one in flight.
/// - A file's close flushes it to its file system: a FUSE file system that the peer serves may never answer
///   (`FUSE_FLUSH`), and the close waits for good (found by a review: a file on such a mount, passed with a frame
///   that did not take it, froze an event loop, every connection on it and the server's shutdown). A device's close
///   may wait too (a terminal drains its output).
///
/// A thread takes the descriptors queued one after another and ends when none is left; another starts when every
/// thread is busy closing, up to ``maximumThreads``, so that one close that waits does not hold the others. Beyond
/// that (a peer that keeps that many closes waiting for good), descriptors wait in the queue, open, until a thread is
/// free: never closed on the caller's thread, where one close that never returns would stop an event loop and every
/// connection on it. The queue holds only open descriptors, so the process's limit of descriptors bounds it; at that
/// limit the server refuses new connections and backs off (`EMFILE`), and the connections it has go on.
enum PassedDescriptorCloser {
    /// The most closing threads at once: 8.
    static let maximumThreads = 8

    private struct State {
        var queue: [Int32] = []
        var threads = 0
        var busy = 0
    }

    private static let state = Mutex(State())

    /// Queues `descriptors` to be closed (with ``csocketipc_close_passed``), starting a thread if every one is busy.
    /// Should no thread start (the process is at its limit of threads), they wait for the next call to start one.
    static func close(_ descriptors: [Int32]) {
        let startsThread = self.state.withLock { state -> Bool in
            state.queue.append(contentsOf: descriptors)
            let startsThread = state.busy == state.threads && state.threads < Self.maximumThreads
            if startsThread { state.threads += 1 }
            return startsThread
        }
        guard startsThread else { return }
        do {
            try DetachedThread.start(name: "sipc-close") { Self.run() }
        } catch {
            self.state.withLock { $0.threads -= 1 }
        }
    }

    /// Closes queued descriptors until none is left.
    private static func run() {
        while true {
            let next = self.state.withLock { state -> Int32? in
                guard !state.queue.isEmpty else {
                    state.threads -= 1
                    return nil
                }
                state.busy += 1
                return state.queue.removeFirst()
            }
            guard let descriptor = next else { return }
            _ = csocketipc_close_passed(descriptor)
            self.state.withLock { $0.busy -= 1 }
        }
    }
}
#endif
