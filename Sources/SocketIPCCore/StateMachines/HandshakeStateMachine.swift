/// The life of one framed connection as its channel handler sees it: from the channel becoming active, through the
/// exchange of hellos, to the close. It decides when the handshake is reported to the connection's owner (once), when
/// the handshake timer is cancelled or fires, and what a failure or the close report. No I/O happens here: the
/// handler performs the actions it returns.
///
/// ```
///  opening ──connectionOpened──▶ awaitingHello ──helloDecoded──▶ helloReceived ──frameHandled / readHandled──▶ established
///     │                              │                               │                                             │
///     └──────────── failed(error) / handshakeTimedOut ───────────────┴──────────────▶ failed ◀──── failed(error) ──┘
///  every state ──channelClosed──▶ closed
/// ```
///
/// The handshake is reported after the first frame that follows the peer's hello has been handled, or at the end of
/// the read that brought the hello: a going-away frame a server sends right after its hello (an authorization
/// refusal, PROTOCOL.md "Refusing a peer") is then known when the client learns the handshake is done.
@usableFromInline
package struct HandshakeStateMachine: Sendable {
    /// Where the connection is.
    @usableFromInline
    package enum State: Equatable, Sendable {
        /// The channel is active; the connection is not set up yet, so nothing is read.
        case opening
        /// This side's hello is on its way; the peer's has not arrived.
        case awaitingHello
        /// The peer's hello arrived in the read being handled; the handshake is not reported yet.
        case helloReceived
        /// The handshake is reported; frames flow.
        case established
        /// The connection failed with this error (the peer broke the protocol, or its handshake timed out): the
        /// peer is being told why, and the channel closes.
        case failed(SocketIPCError)
        /// The channel is closed.
        case closed(SocketIPCError?)
    }

    /// The state.
    package private(set) var state: State = .opening {
        didSet { self.mayHandleFrames = Self.handlesFrames(in: self.state) }
    }

    /// Whether frames may be read and handed out: the connection is set up and has neither failed nor closed.
    ///
    /// Kept as a stored flag, updated with every change of ``state``: the read loop asks it before every frame, and
    /// reading one `Bool` costs nothing, where looking at the state would copy it.
    @usableFromInline
    package private(set) var mayHandleFrames = false
    /// Whether the peer's hello arrived (whatever happened after it).
    private var helloArrived = false
    /// Whether the handshake was reported; it is, once.
    package private(set) var handshakeReported = false

    /// Starts in ``State/opening``.
    package init() {}

    private static func handlesFrames(in state: State) -> Bool {
        switch state {
        case .awaitingHello, .helloReceived, .established: true
        case .opening, .failed, .closed: false
        }
    }

    /// Whether the handshake has been reported.
    package var isEstablished: Bool {
        if case .established = self.state { return true }
        return false
    }

    /// The error the connection failed with, once it has.
    package var failure: SocketIPCError? {
        switch self.state {
        case .failed(let error): error
        case .closed(let error): error
        default: nil
        }
    }

    // MARK: - Events

    /// What to do once the connection is set up.
    package enum OpenedAction: Equatable, Sendable {
        /// Send this side's hello, start the handshake and idle timers, and tell the owner and the handler.
        case sendHelloAndStartTimers
        /// The channel closed while the connection was being set up: do nothing more.
        case none
    }

    /// The connection object exists (the peer's credentials are read): this side's hello may go out.
    package mutating func connectionOpened() -> OpenedAction {
        guard case .opening = self.state else { return .none }
        self.state = .awaitingHello
        return .sendHelloAndStartTimers
    }

    /// The decoder accepted the peer's hello.
    package mutating func helloDecoded() {
        if case .opening = self.state { return }
        self.helloArrived = true
        if case .awaitingHello = self.state { self.state = .helloReceived }
    }

    /// What to do after a frame or a read was handled.
    package enum HandledAction: Equatable, Sendable {
        /// Report the completed handshake to the owner, once, and cancel the handshake timer.
        case reportHandshake
        /// Nothing.
        case none
    }

    /// A frame that followed the peer's hello was handed out.
    ///
    /// The handshake is reported once the hello arrived, also when the frame just handled closed or failed the
    /// connection (a handler that aborts on the first message): the owner then learns of the handshake first and of
    /// the close after it, never of the close alone.
    package mutating func frameHandled() -> HandledAction {
        guard self.helloArrived, !self.handshakeReported else { return .none }
        self.handshakeReported = true
        if case .helloReceived = self.state { self.state = .established }
        return .reportHandshake
    }

    /// A read was handled to its end (or as far as it could be).
    package mutating func readHandled() -> HandledAction {
        self.frameHandled()
    }

    /// What to do when the handshake timer fires.
    package enum TimerAction: Equatable, Sendable {
        /// The peer's hello did not arrive in time: tell it so (going-away) and close at once, without lingering.
        case failTimedOut(SocketIPCError)
        /// The handshake completed, failed or the channel closed meanwhile: nothing.
        case none
    }

    /// The handshake timer fired.
    /// - Parameter timeout: The handshake timeout, for the error's message.
    package mutating func handshakeTimedOut(after timeout: Duration) -> TimerAction {
        switch self.state {
        case .opening, .awaitingHello:
            let error = SocketIPCError(.timedOut, "the peer sent no complete hello within \(timeout)")
            self.state = .failed(error)
            return .failTimedOut(error)
        case .helloReceived, .established, .failed, .closed:
            // (A hello that arrived is complete, even while its read is still being handled.)
            return .none
        }
    }

    /// What to do when the connection fails.
    package enum FailedAction: Equatable, Sendable {
        /// Tell the peer why (going-away) and close.
        case tellPeerAndClose(SocketIPCError)
        /// Close without telling the peer: the failure is the channel's own (an I/O error), so nothing can be sent.
        case close
        /// It already failed or closed: nothing more.
        case none
    }

    /// The decoder met bytes it cannot continue after.
    package mutating func protocolFailed(_ error: SocketIPCError) -> FailedAction {
        switch self.state {
        case .opening, .awaitingHello, .helloReceived, .established:
            self.state = .failed(error)
            return .tellPeerAndClose(error)
        case .failed, .closed:
            return .none
        }
    }

    /// The channel reported an error (such as `ECONNRESET`).
    package mutating func channelFailed(_ error: SocketIPCError) -> FailedAction {
        switch self.state {
        case .opening, .awaitingHello, .helloReceived, .established:
            self.state = .failed(error)
            return .close
        case .failed, .closed:
            return .close
        }
    }

    /// What to report once the channel closed.
    package enum ClosedAction: Equatable, Sendable {
        /// Tell the connection, its handler and its owner that it closed; `failure` is `nil` for an orderly close.
        case reportClosed(failure: SocketIPCError?)
        /// It was reported already.
        case none
    }

    /// The channel became inactive.
    package mutating func channelClosed() -> ClosedAction {
        switch self.state {
        case .closed:
            return .none
        case .failed(let error):
            self.state = .closed(error)
            return .reportClosed(failure: error)
        case .opening, .awaitingHello, .helloReceived, .established:
            self.state = .closed(nil)
            return .reportClosed(failure: nil)
        }
    }
}
