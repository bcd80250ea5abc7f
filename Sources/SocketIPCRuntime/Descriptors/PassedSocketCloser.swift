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
/// (a peer that keeps that many closes waiting), sockets wait in the queue, open, until a thread is free, at most
/// ``maximumQueued`` of them: past that, and when no thread can start, the caller closes its own as before, so that
/// the queue cannot hold the process's descriptors (found by a review).
enum PassedSocketCloser {
    /// The most closing threads at once: 8.
    static let maximumThreads = 8
    /// The most sockets waiting for a closing thread: 1,024.
    static let maximumQueued = 1024

    private struct State {
        var queue: [Int32] = []
        var threads = 0
        var busy = 0
    }

    private static let state = Mutex(State())

    /// Queues `sockets` to be closed (with ``csocketipc_close_passed``), starting a thread if every one is busy.
    static func close(_ sockets: [Int32]) {
        let (startsThread, overflow) = self.state.withLock { state -> (Bool, ArraySlice<Int32>) in
            let room = max(0, Self.maximumQueued - state.queue.count)
            state.queue.append(contentsOf: sockets.prefix(room))
            let startsThread = state.busy == state.threads && state.threads < Self.maximumThreads
            if startsThread { state.threads += 1 }
            return (startsThread, sockets.dropFirst(room))
        }
        // Past the queue's bound: closed here, as before this closer.
        for socket in overflow { _ = csocketipc_close_passed(socket) }
        guard startsThread else { return }
        do {
            try DetachedThread.start(name: "sipc-close") { Self.run() }
        } catch {
            // No thread (the process is at its limit of threads): this caller's own sockets, if still queued, are
            // closed here, as before; the others wait for a thread that runs.
            let own = self.state.withLock { state -> [Int32] in
                state.threads -= 1
                let queued = Set(state.queue)
                let own = sockets.filter { queued.contains($0) }
                let ownSet = Set(own)
                state.queue.removeAll { ownSet.contains($0) }
                return own
            }
            for socket in own { _ = csocketipc_close_passed(socket) }
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
