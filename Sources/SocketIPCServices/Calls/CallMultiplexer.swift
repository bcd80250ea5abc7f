import NIOCore
import SocketIPCCore
import Synchronization

/// The calls of one connection, both ways: the services layer's receiver of call frames (kinds `0x06` to `0x0A`).
///
/// It routes each frame to its ``CallStream`` by id, starts a handler for each call the peer opens (with the
/// ``ServiceRouter`` it was installed with; without one it answers `unknownMethod`), and fails every call when the
/// connection closes.
final class CallMultiplexer: CallFrameReceiver {
    /// The methods served, until the connection closes: then it is let go, so that a handler's state that holds the
    /// connection (`context.connection`, kept in something the router's closures capture) makes no cycle that keeps
    /// the connection, its channel and its calls for good (found by a review with AddressSanitizer).
    private let routerWhileOpen: Mutex<ServiceRouter?>

    /// The methods served; `nil` without a router, and once the connection closed.
    var router: ServiceRouter? { self.routerWhileOpen.withLock { $0 } }
    private let streams = Mutex<Streams>(Streams())
    /// What runs once the peer said going-away or the connection closed (``whenPeerGoingAway(on:_:)``); `nil` once
    /// that happened.
    private let peerGoingAwayCallbacks = Mutex<[@Sendable () -> Void]?>([])

    /// The calls in progress by id, and the one a frame last went to: a stream's frames come in runs for one call,
    /// and comparing an id costs less than hashing it.
    struct Streams {
        var byID: [UInt32: CallStream] = [:]
        var last: CallStream?
        /// How many of them the peer opened (this side runs their handlers).
        var incoming = 0

        @inline(__always)
        mutating func lookUp(_ id: UInt32) -> CallStream? {
            if let last = self.last, last.id == id { return last }
            let stream = self.byID[id]
            if stream != nil { self.last = stream }
            return stream
        }

        mutating func insert(_ stream: CallStream) {
            if let earlier = self.byID.updateValue(stream, forKey: stream.id), !earlier.isCaller { self.incoming -= 1 }
            if !stream.isCaller { self.incoming += 1 }
            if self.last?.id == stream.id { self.last = stream }
        }

        mutating func remove(_ id: UInt32) {
            if let removed = self.byID.removeValue(forKey: id), !removed.isCaller { self.incoming -= 1 }
            if self.last?.id == id { self.last = nil }
        }
    }

    init(router: ServiceRouter?) {
        self.routerWhileOpen = Mutex(router)
    }

    /// The connection's multiplexer, installed (without a router) if it has none.
    static func of(_ connection: Connection) -> CallMultiplexer {
        let receiver = connection.callReceiver { CallMultiplexer(router: nil) }
        guard let multiplexer = receiver as? CallMultiplexer else {
            preconditionFailure("the connection's call frames go to another receiver")
        }
        return multiplexer
    }

    /// Installs a multiplexer serving `router`'s methods on `connection`.
    static func install(router: ServiceRouter, on connection: Connection) {
        _ = connection.callReceiver { CallMultiplexer(router: router) }
    }

    func register(_ stream: CallStream) {
        self.streams.withLock { $0.insert(stream) }
    }

    func remove(_ id: UInt32) {
        self.streams.withLock { $0.remove(id) }
    }

    /// The call of `id`, if it is in progress.
    func lookUp(_ id: UInt32) -> CallStream? {
        self.streams.withLock { $0.lookUp(id) }
    }

    /// How many calls the peer opened are in progress: what ``ServiceRouter/maximumConcurrentCalls`` bounds. This
    /// side's own calls do not count (found by a review: a client with 100 watches open refused every call back from
    /// its server).
    var incomingCount: Int { self.streams.withLock { $0.incoming } }

    /// How many calls are in progress either way.
    var count: Int { self.streams.withLock { $0.byID.count } }

    /// The most a peer without strict credit (``HelloFlags/strictCredit``) may make the connection hold beyond its
    /// calls' windows, across them: 4 messages of the connection's maximum size, and at least 16 MiB (64 MiB with
    /// the defaults).
    ///
    /// Version 1 of calls lets each message that a call's credit, while above zero, does not cover go beyond it: one
    /// message of up to the maximum size per call, so 1.6 GB across 100 calls whose readers are busy. A peer with
    /// strict credit never sends beyond it; this bounds the others, as D-Bus bounds the bytes a connection may have
    /// queued unread (`max_incoming_bytes`).
    static func heldBeyondWindowsLimit(maximumMessageSize: Int) -> Int {
        max(16 * 1024 * 1024, 4 * maximumMessageSize)
    }

    /// After a call's message was held beyond its window: `resourceExhausted` if the connection's calls hold more
    /// than ``heldBeyondWindowsLimit(maximumMessageSize:)`` beyond their windows in all (the call whose message
    /// tipped it over then ends, its messages dropped; the connection and its other calls go on), `nil` otherwise.
    /// Sums the calls' holdings (a lock each): only a message beyond its credit comes here.
    func checkHeldBeyondWindows(on connection: Connection) -> SocketIPCError? {
        let limit = Self.heldBeyondWindowsLimit(maximumMessageSize: connection.maximumMessageSize)
        let streams = self.streams.withLock { Array($0.byID.values) }
        let held = streams.reduce(0) { $0 + $1.heldBeyondWindow }
        guard held > limit else { return nil }
        return SocketIPCError(.resourceExhausted, "\(Self.heldBeyondWindowsText): \(held) bytes, more than \(limit)")
    }

    /// Whether the calls the peer opened hold more received descriptors their handlers have not taken than the
    /// connection may (``SocketIPCRuntime/Connection/maximumDescriptorsHeldByCalls``): the error to end the call whose
    /// message tipped it over with, if so. Each call is bounded by its credit (or its bound of 64 unread); this bounds
    /// their sum, so that a peer's 100 calls whose handlers read slowly cannot hold 100 calls' worth of descriptors,
    /// which the server's budget of descriptors per connection does not count. The calls this side opened are not
    /// counted: their readers are this side's own application, which opened as many as it reads (found by a review:
    /// a client whose four streams were unread for a second had one cancelled).
    func checkHeldDescriptors(on connection: Connection) -> SocketIPCError? {
        let limit = connection.maximumDescriptorsHeldByCalls
        let streams = self.streams.withLock { Array($0.byID.values) }
        let held = streams.reduce(0) { $0 + ($1.isCaller ? 0 : $1.heldDescriptors) }
        guard held > limit else { return nil }
        return SocketIPCError(.resourceExhausted, "\(Self.heldDescriptorsText): \(held), more than \(limit)")
    }

    /// Why a call was ended for the descriptors held unread across the connection's calls.
    static let heldDescriptorsText =
        "the peer's calls hold more descriptors, unread, than this side holds for one connection"

    /// Why a call was ended for the messages held beyond the connection's calls' windows.
    static let heldBeyondWindowsText =
        "the peer's calls hold more messages beyond their credit windows, unread, than this side holds for a peer "
        + "without strict credit (hello flag 0x08, PROTOCOL.md \"Flow control\")"

    // MARK: - CallFrameReceiver

    func receive(_ frame: CallFrame, id: UInt32, on connection: Connection) -> SocketIPCError? {
        if case .open(let open) = frame {
            return self.open(open, id: id, on: connection)
        }
        // A frame of a call that is over (or never was) is ignored, as a late reply is.
        guard let stream = self.streams.withLock({ $0.lookUp(id) }) else { return nil }
        return stream.receive(frame)
    }

    func cancelStopsHandler(id: UInt32) -> Bool {
        guard let stream = self.streams.withLock({ $0.byID[id] }), !stream.isCaller else { return false }
        return stream.stopReason == nil
    }

    func takesSharedMessage(id: UInt32, length: Int, on connection: Connection) -> Bool {
        guard let stream = self.streams.withLock({ $0.lookUp(id) }) else { return false }
        return stream.takesMessage(ofSize: length)
    }

    func receive(
        _ frame: CallFrame,
        id: UInt32,
        descriptors: ReceivedDescriptors,
        on connection: Connection
    ) -> SocketIPCError? {
        // Only call messages carry descriptors (the connection refuses them before any other frame); those of a
        // call that is over are closed as `descriptors` is released.
        guard let stream = self.streams.withLock({ $0.lookUp(id) }) else { return nil }
        return stream.receive(frame, descriptors: descriptors)
    }

    func connectionGoingAway(_ connection: Connection) {
        guard self.router?.endsResponseStreamsOnShutdown ?? false else { return }
        let streams = self.streams.withLock { Array($0.byID.values) }
        for stream in streams where !stream.isCaller && stream.streamsResponses {
            stream.stopHandler(.serverGoingAway, failing: CancellationError())
        }
    }

    /// Runs `body` once the peer has said going-away on `connection`, or the connection closed (at once if either
    /// happened already), on any thread.
    func whenPeerGoingAway(on connection: Connection, _ body: @escaping @Sendable () -> Void) {
        let added = self.peerGoingAwayCallbacks.withLock { callbacks -> Bool in
            guard callbacks != nil else { return false }
            callbacks!.append(body)
            return true
        }
        if !added {
            body()
        } else if connection.peerGoingAwayError != nil || !connection.isOpen {
            // It happened before `body` was added, and may have found no callback yet.
            self.runPeerGoingAwayCallbacks()
        }
    }

    private func runPeerGoingAwayCallbacks() {
        let callbacks = self.peerGoingAwayCallbacks.withLock { callbacks in
            defer { callbacks = nil }
            return callbacks ?? []
        }
        for callback in callbacks { callback() }
    }

    func peerIsGoingAway(_ connection: Connection) {
        self.runPeerGoingAwayCallbacks()
    }

    func connectionClosed(_ connection: Connection, error: SocketIPCError) {
        // Released outside the lock, at the end of this function: what the router's closures own may run code
        // (a deinit) as it goes.
        let released = self.routerWhileOpen.withLock { $0.take() }
        defer { withExtendedLifetime(released) {} }
        self.runPeerGoingAwayCallbacks()
        let streams = self.streams.withLock { Array($0.byID.values) }
        for stream in streams {
            stream.stopHandler(.connectionClosed, failing: error)
        }
    }
}
