#if os(Linux)
import CSocketIPCLinux
import Synchronization

/// Closes Unix-domain sockets a peer passed, on threads of its own, never on the calling thread (an event loop, most
/// often).
///
/// A passed Unix-domain socket may hold, in its receive queue, descriptors in flight that no one else holds: a TCP
/// socket with `SO_LINGER` on and a send queue its peer never drains, passed into it and closed by the sender. Their
/// last close happens with the socket's, in the thread that closes it, and waits out the linger time the peer chose
/// (found by a review: such a socket, passed to `serve`, stopped an event loop, and every connection on it, for as
/// long as the peer kept the TCP connection open). `SO_LINGER` can be turned off only on a socket one holds
/// (``closePassedDescriptors(_:)``), not on one in flight.
///
/// A thread takes the sockets queued one after another and ends when none is left; another starts when every thread
/// is busy closing, up to ``maximumThreads``, so that one close that waits does not hold the others. Beyond that
/// (a peer that keeps that many closes waiting), sockets wait in the queue, open, until a thread is free: they
/// cost descriptors, not an event loop.
enum PassedSocketCloser {
    /// The most closing threads at once: 8.
    static let maximumThreads = 8

    private struct State {
        var queue: [Int32] = []
        var threads = 0
        var busy = 0
    }

    private static let state = Mutex(State())

    /// Queues `sockets` to be closed (with ``csocketipc_close_passed``), starting a thread if every one is busy.
    static func close(_ sockets: [Int32]) {
        let startsThread = self.state.withLock { state -> Bool in
            state.queue.append(contentsOf: sockets)
            guard state.busy == state.threads, state.threads < Self.maximumThreads else { return false }
            state.threads += 1
            return true
        }
        guard startsThread else { return }
        do {
            try DetachedThread.start(name: "sipc-close") { Self.run() }
        } catch {
            // No thread (the process is at its limit of threads): closed here, as before; `run` counts this thread
            // out when the queue is empty.
            Self.run()
        }
    }

    /// Closes queued sockets until none is left.
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
            guard let socket = next else { return }
            _ = csocketipc_close_passed(socket)
            self.state.withLock { $0.busy -= 1 }
        }
    }
}
#endif
