import NIOCore

/// What handing out one frame asks of the read loop.
enum DecodeStep: Equatable {
    /// Go on with the next frame.
    case next
    /// The peer's unanswered requests reached the maximum: hand out nothing more for now (but replies, pings, pongs
    /// and call credit). The read loop asks the connection to pause at once (``Connection/pauseReading()``), and goes
    /// on if answers made room already.
    case pauseReading
    /// As ``pauseReading``, after a request whose payload was in shared memory: if answers made room already, the
    /// read yields its turn instead (``yieldTurn``), as after any shared payload.
    case pauseReadingAfterSharedPayload
    /// The peer went away with a reason other than `0x00`: close.
    case peerFailed
    /// A call frame broke the protocol: say going-away `0x01` and close.
    case violation(SocketIPCError)
    /// A payload in shared memory was handed out, or the read handed out its budget of frames
    /// (``ConnectionChannelHandler/frameBudget``): that was this read's share of the event loop, so the rest is handed
    /// out after the loop's other work (``ConnectionChannelHandler/resumeAfterYield(context:)``).
    case yieldTurn
    /// The peer owes a whole burst of cancels (``CancelAllowance``): the rest is handed out after the given time
    /// (``ConnectionChannelHandler/resumeAfterYield(context:)``).
    case throttle(Duration)

    /// Whether the step gives up the loop for now, the rest of the read kept (``yieldTurn`` or ``throttle(_:)``).
    @inline(__always)
    var yields: Bool {
        switch self {
        case .yieldTurn, .throttle: true
        default: false
        }
    }

    /// Whether the step is ``next``: a pattern match, where `== .next` would make and compare a whole value (with
    /// the error of ``violation(_:)``) per frame.
    @inline(__always)
    var isNext: Bool {
        if case .next = self { true } else { false }
    }
}

extension ConnectionChannelHandler {
    /// Hands out every whole frame in the bytes kept from earlier reads and then in `incoming`, keeps the rest, and
    /// pauses or closes as the frames ask.
    func decode(_ incoming: inout ByteBuffer, context: ChannelHandlerContext, connection: Connection) {
        if incoming.readableBytes == 0, let kept = self.inbound.partial.take() {
            // Only bytes kept (after a pause or a yield): decoded where they lie, as a read is, so that whole frames
            // take the common path.
            incoming = kept.bytes
        }
        // Work on locals and store them back once per read: class properties accessed per frame would cost a
        // dynamic exclusivity check each time.
        var decoder = self.decoder
        let helloWasReceived = decoder.helloReceived
        var handler = self.handler.take()!
        let wasEstablished = self.state.isEstablished
        let limit = self.options.maximumConcurrentRequests
        var failure: SocketIPCError?
        var leftover: FrameAssembler?
        var step = DecodeStep.next
        let closing = self.inbound.closing
        // What is left of this turn's share of the event loop, in frames handed out: see frameBudget.
        var budget = Self.frameBudget
        // And its share in time (TurnClock).
        var clock = TurnClock(budget: budget, nanoseconds: self.sharedOptions.turnTimeNanoseconds)
        self.dispatching = true
        // The frames go to the handler opened once for the whole read (`Handler` its own type): called through the
        // existential, each frame would check that its box is not shared (2 % of W3's server in a profile). Nothing
        // in here makes a type of `Handler` (no `Optional<Handler>`), which unspecialized code would look up. The
        // read's variables are passed in, under the same names: captured, each access would cost a dynamic
        // exclusivity check (a third of W3's server in a profile).
        func handOut<Handler: ConnectionHandler>(
            to handler: inout Handler,
            _ incoming: inout ByteBuffer,
            _ decoder: inout FrameDecoder,
            _ step: inout DecodeStep,
            _ leftover: inout FrameAssembler?,
            _ failure: inout SocketIPCError?,
            _ budget: inout Int,
            _ clock: inout TurnClock
        ) {
            do {
                // First the bytes earlier reads left: frames kept while paused, or the start of a frame, which takes
                // from this read just the bytes it lacks. The decoder looks at the partial frame after every piece, so
                // a bad frame is refused at the first byte that shows it, however the bytes were split.
                if var partial = self.inbound.partial.take() {
                    while self.state.mayHandleFrames {
                        let before = partial.bytes
                        let afterHello = decoder.helloReceived
                        if let frame = try decoder.next(from: &partial.bytes) {
                            if Self.holdsRequest(frame, closing: closing, connection: connection) {
                                partial.bytes = Self.afterHello(before, helloWasRead: afterHello)
                                step = .pauseReading
                                break
                            }
                            if !wasEstablished { connection.peerHelloReceived(flags: decoder.peerFlags) }
                            step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: limit)
                            if !wasEstablished { self.frameHandledBeforeEstablished(connection) }
                            step = Self.settlePause(step, connection: connection)
                            budget &-= Self.controlFrameCost
                            if step.isNext && clock.isUsedUp(budget) { step = .yieldTurn }
                            if closing && step.yields { step = .next }
                            if !step.isNext { break }
                            continue
                        }
                        guard partial.readableBytes > 0, incoming.readableBytes > 0 else { break }
                        let missing = max(decoder.bytesNeeded(toComplete: partial.bytes) - partial.readableBytes, 1)
                        partial.append(incoming.readSlice(length: min(missing, incoming.readableBytes))!)
                    }
                    if partial.readableBytes > 0 { leftover = partial }
                }
                // Then the rest of this read, decoded where it lies, without copying.
                if leftover == nil && step.isNext {
                    // Messages, requests, replies and call messages of an established connection without descriptors
                    // take the fast path. The bytes are looked at once for the whole read (one exclusivity check of the
                    // buffer's storage, not one per frame); `incoming` keeps its storage and only its reader index
                    // moves meanwhile.
                    let window =
                        wasEstablished && connection.descriptorPassing == nil ? ReadableBytesWindow(incoming) : nil
                    while self.state.mayHandleFrames {
                        if let window, let header = decoder.nextDataFrameHeader(in: incoming, window: window) {
                            // A request that its user has no room for stays unread here, and is handed out once the
                            // user has (``Connection/waitsForUserRequestRoom()``).
                            if header.kind == .request, !closing, connection.waitsForUserRequestRoom() {
                                step = .pauseReading
                                break
                            }
                            // `step` is assigned only when the loop stops: a step that is known to be `.next` has
                            // nothing to destroy, where assigning over `step` would destroy its old value per frame.
                            var dispatched = Self.dispatch(
                                header, in: &incoming, to: &handler, connection: connection, maximumRequests: limit)
                            budget &-= 1
                            if case .pauseReading = dispatched, !connection.pauseReading() { dispatched = .next }
                            if case .next = dispatched {
                                if closing || !clock.isUsedUp(budget) { continue }
                                step = .yieldTurn
                                break
                            }
                            if closing && dispatched.yields { continue }
                            step = dispatched
                            break
                        }
                        let before = incoming
                        let afterHello = decoder.helloReceived
                        guard let frame = try decoder.next(from: &incoming) else { break }
                        if Self.holdsRequest(frame, closing: closing, connection: connection) {
                            incoming = Self.afterHello(before, helloWasRead: afterHello)
                            step = .pauseReading
                            break
                        }
                        // The first frames after the hello may come in the same read: the peer's flags are known to
                        // their handlers (Connection.passesDescriptors).
                        if !wasEstablished { connection.peerHelloReceived(flags: decoder.peerFlags) }
                        step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: limit)
                        if !wasEstablished { self.frameHandledBeforeEstablished(connection) }
                        step = Self.settlePause(step, connection: connection)
                        budget &-= Self.controlFrameCost
                        if step.isNext && clock.isUsedUp(budget) { step = .yieldTurn }
                        if closing && step.yields { step = .next }
                        if !step.isNext { break }
                    }
                }
                if incoming.readableBytes > 0 {
                    if leftover != nil {
                        leftover!.append(incoming)
                    } else {
                        leftover = InboundBuffer.keep(incoming)
                    }
                }
            } catch let error as SocketIPCError {
                failure = error
            } catch {
                failure = SocketIPCError(.protocolViolation, "\(error)", cause: error)
            }
        }
        handOut(to: &handler, &incoming, &decoder, &step, &leftover, &failure, &budget, &clock)
        self.dispatching = false
        self.handler = handler
        self.decoder = decoder
        if !wasEstablished {
            if decoder.helloReceived && !helloWasReceived {
                connection.peerHelloReceived(flags: decoder.peerFlags)
                connection.startKeepalive()
            }
            if decoder.helloReceived { self.state.helloDecoded() }
            if self.state.readHandled() == .reportHandshake { self.reportHandshake(connection) }
        }
        if let failure {
            self.fail(failure, context: context)
            return
        }
        guard self.state.mayHandleFrames else { return }
        if let leftover { self.inbound.partial = leftover }
        switch step {
        case .next:
            break
        case .pauseReading, .pauseReadingAfterSharedPayload:
            // The connection paused already (`connection.pauseReading()` in the loop above): when answers had made
            // room already, the loop went on instead, within this read's budget. (It called `decode` again for the
            // rest, a level deeper for each such request: found by a review, a few thousand requests answered at
            // once overflowed the event loop's stack and killed the server.)
            self.inbound.isPaused = true
            if self.inbound.partial != nil {
                self.handOutRepliesWhilePaused(context: context, connection: connection)
            }
        case .peerFailed:
            // PROTOCOL.md: after a going-away with a reason other than 0x00 the receiver reads no further and closes;
            // requests in flight fail with the reason's error.
            self.inbound.discard()
            context.close(promise: nil)
        case .violation(let error):
            self.fail(error, context: context)
        case .throttle(let wait):
            // As for a yield, but after `wait`: the peer goes on cancelling calls it was refused.
            self.inbound.isYielding = true
            let channel = context.channel
            context.eventLoop.scheduleTask(in: TimeAmount(wait)) {
                channel.pipeline.fireUserInboundEventTriggered(YieldedTurnEnded())
            }
        case .yieldTurn:
            // What is kept is handed out after the loop's other work, and nothing more is read meanwhile (reads
            // already under way in NIO's read loop only add to it), so that one peer's frames of a few bytes each,
            // each standing for up to 16 MiB of shared memory to map and copy, or a megabyte of call opens and
            // cancels, cannot hold the loop for all of them at once (found by reviews: a benign request waited 113 s
            // behind shared payloads, 0.1-0.3 s behind a megabyte of ignored call frames).
            self.yieldUntilPolled(context: context, connection: connection)
        }
    }

    /// `bytes` as they were before a frame was decoded from them, less the hello if that decode read it too: what to
    /// keep of them to decode the frame again later (found by a test: the hello put back with a request held was
    /// then read as a frame of 1,397,313,603 bytes, "SIPC").
    @inline(__always)
    static func afterHello(_ bytes: ByteBuffer, helloWasRead: Bool) -> ByteBuffer {
        guard !helloWasRead else { return bytes }
        var rest = bytes
        rest.moveReaderIndex(forwardBy: Hello.length)
        return rest
    }

    /// Whether `frame`, just decoded, is a request that its user has no room for
    /// (``Connection/waitsForUserRequestRoom()``): the caller puts its bytes back and pauses. Not while closing, when
    /// everything kept is handed out, nor for a request that takes the descriptors a descriptors frame before it
    /// announced (those are taken already: it pauses after the request, as at a connection's own limit). A first
    /// version left every request of a server with descriptor passing on to that check, also those of peers that pass
    /// none (found by a review: 400 connections at a bound of 50 ran 126 commands).
    @inline(__always)
    static func holdsRequest(_ frame: Frame, closing: Bool, connection: Connection) -> Bool {
        guard case .request = frame, !closing else { return false }
        if let passing = connection.descriptorPassing, passing.hasAnnounced { return false }
        return connection.waitsForUserRequestRoom()
    }

    /// A step that asks to pause for requests, settled: the connection pauses now, or, if answers made room already,
    /// the read goes on (``DecodeStep/next``), or gives up its turn after a shared payload (``DecodeStep/yieldTurn``).
    @inline(__always)
    static func settlePause(_ step: DecodeStep, connection: Connection) -> DecodeStep {
        switch step {
        case .pauseReading: connection.pauseReading() ? .pauseReading : .next
        case .pauseReadingAfterSharedPayload: connection.pauseReading() ? .pauseReading : .yieldTurn
        default: step
        }
    }

    /// After a ``DecodeStep/yieldTurn``, once the event loop has polled its sockets: hands out what was kept, then reads
    /// again.
    func resumeAfterYield(context: ChannelHandlerContext) {
        guard self.inbound.isYielding else { return }
        if self.pausesReadingWhileUnwritable && !context.channel.isWritable {
            // A server stops reading while it cannot write (the peer does not read its answers); the frames already
            // kept wait too, until the channel is writable (`channelWritabilityChanged`). Each may be a request of a
            // few bytes standing for 16 MiB of shared memory, whose answer would be queued all the same (found by a
            // review: a peer that sent one sealed memfd again and again, and read nothing, held about 64 answers of
            // its size per connection, 4 GB for four connections of 16 MiB payloads).
            self.inbound.yieldWaitsForWritability = true
            return
        }
        self.inbound.yieldWaitsForWritability = false
        self.inbound.isYielding = false
        guard let connection = self.connection, self.state.mayHandleFrames else { return }
        if self.inbound.isPaused {
            // Still paused for requests: only what may pass a pause goes on.
            connection.readBatchStarted()
            self.handOutRepliesWhilePaused(context: context, connection: connection)
            connection.readBatchEnded()
        } else {
            self.handOutKept(context: context, connection: connection)
        }
        self.readIfHeld(context: context)
    }

    /// While paused for requests: hands out the replies (with their descriptors), error replies, pings, pongs and call
    /// credit among the bytes kept (a ping is answered at once, so that a busy peer is not taken for a frozen one), and
    /// moves the other frames among them (requests, messages, call frames, going-away), in order, to the held frames;
    /// keeps the start of an unfinished frame. A going-away is held too, so that it still comes after the requests
    /// sent before it.
    func handOutRepliesWhilePaused(context: ChannelHandlerContext, connection: Connection) {
        guard var partial = self.inbound.partial.take(), self.state.mayHandleFrames else { return }
        var handler = self.handler.take()!
        var failure: SocketIPCError?
        var step = DecodeStep.next
        // This read's share of the event loop (frameBudget): each frame counts as a control frame, whether handed
        // out or held (found by a review: a paused connection answered 466,000 pings in one turn).
        var budget = Self.frameBudget
        // And its share in time, as `decode`'s: a reply's or a ping's handling may take long too.
        var clock = TurnClock(budget: budget, nanoseconds: self.sharedOptions.turnTimeNanoseconds)
        self.dispatching = true
        do {
            loop: while self.state.mayHandleFrames {
                // Closing, everything kept goes at once, as `decode` does (found by a review: a reply read before the
                // close was dropped behind the budget).
                if clock.isUsedUp(budget) && !self.inbound.closing {
                    step = .yieldTurn
                    break
                }
                budget &-= Self.controlFrameCost
                // The same bytes, not yet read: the frame's own bytes are taken from here if it is held.
                var before = partial.bytes
                guard let frame = try self.decoder.next(from: &partial.bytes) else { break }
                switch frame {
                case .descriptors(let count):
                    // Its descriptors go with the frame after it. A reply after it takes them now: a handler may be
                    // waiting for that reply to answer. Any other frame after it is held with it, and its group is
                    // taken from the relay now and kept for when the held frames are handed out, so that a later
                    // reply's group can be taken meanwhile; the loop goes on, so that the replies, credit, pings and
                    // pongs behind them still get through (found by reviews: they waited for the pause to end, for
                    // good when the handler's answer waited for one of them). Without the frame after it yet, both
                    // wait for more bytes.
                    var after = partial.bytes
                    guard let next = try self.decoder.next(from: &after), let passing = connection.descriptorPassing
                    else {
                        partial.bytes = before
                        break loop
                    }
                    if passing.heldCount > self.inbound.heldDescriptorFrames {
                        // Held before, handed back when a pause ended, and held again: its group is kept already.
                        self.inbound.heldDescriptorFrames += 1
                        self.inbound.hold(before.readSlice(length: after.readerIndex - before.readerIndex)!)
                    } else if Self.isReply(next) {
                        if let violation = passing.announceFromRelay(count) {
                            step = .violation(violation)
                        } else {
                            step = Self.dispatch(next, to: &handler, connection: connection, maximumRequests: .max)
                            if step.yields { step = .next }
                        }
                    } else if let violation = passing.hold(count) {
                        step = .violation(violation)
                    } else {
                        self.inbound.heldDescriptorFrames += 1
                        self.inbound.hold(before.readSlice(length: after.readerIndex - before.readerIndex)!)
                    }
                    partial.bytes = after
                case .call(let id, .credit) where !self.inbound.heldCallOpens.contains(id):
                    // Credit is for what this side sends, not for the frames held: handed out at once, so that a
                    // call's handler waiting for it to send (a stream the peer reads) is not kept waiting by the
                    // pause, nor a request handler that waits for that call. Credit for a call whose open is held
                    // waits with it.
                    step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: .max)
                case .call(let id, .open):
                    self.inbound.heldCallOpens.insert(id)
                    self.inbound.hold(before.readSlice(length: partial.bytes.readerIndex - before.readerIndex)!)
                case .goAway(let reason, _) where reason != .normal:
                    // PROTOCOL.md: after a reason other than 0x00 nothing more is read and the connection closes; held,
                    // the frames after it were still answered (found by a review).
                    step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: .max)
                case .request, .message, .goAway, .call:
                    self.inbound.hold(before.readSlice(length: partial.bytes.readerIndex - before.readerIndex)!)
                default:
                    step = Self.dispatch(frame, to: &handler, connection: connection, maximumRequests: .max)
                }
                // Replies are handed out while paused whatever they cost: a request of this side waits for each.
                if step.yields { step = .next }
                if !step.isNext { break }
            }
            if self.inbound.closing, case .yieldTurn = step { step = .next }
        } catch let error as SocketIPCError {
            failure = error
        } catch {
            failure = SocketIPCError(.protocolViolation, "\(error)", cause: error)
        }
        self.dispatching = false
        self.handler = handler
        if let failure {
            self.fail(failure, context: context)
        } else if step == .peerFailed {
            self.inbound.discard()
            context.close(promise: nil)
        } else if case .violation(let error) = step {
            self.fail(error, context: context)
        } else if partial.readableBytes > 0, self.state.mayHandleFrames {
            self.inbound.partial = partial
            if case .yieldTurn = step { self.yieldUntilPolled(context: context, connection: connection) }
        }
    }

    /// Gives up the event loop until it has polled its sockets, keeping what was read for then
    /// (``resumeAfterYield(context:)``): not merely until its queued tasks ran, since SwiftNIO runs every queued
    /// task, also those queued meanwhile, before it polls again, so other connections' reads would still wait.
    func yieldUntilPolled(context: ChannelHandlerContext, connection: Connection) {
        guard !self.inbound.isYielding else { return }
        self.inbound.isYielding = true
        let channel = context.channel
        connection.taskExecutor.turn.afterPoll {
            channel.pipeline.fireUserInboundEventTriggered(YieldedTurnEnded())
        }
    }

    /// Whether `frame` is a reply, or stands for one whose payload is in shared memory.
    static func isReply(_ frame: Frame) -> Bool {
        switch frame {
        case .reply: true
        case .sharedPayload(let kind, _, _): kind == .reply
        default: false
        }
    }

    /// Answers made room for more requests: hand out the frames kept meanwhile, then read again.
    func resumeAfterPause(context: ChannelHandlerContext) {
        guard self.inbound.isPaused, let connection = self.connection, self.state.mayHandleFrames else {
            return
        }
        // Woken, but the first frame held is a request that its user still has no room for (the user's other
        // connections, woken too, took it): stay paused as is, rather than go through everything kept to hold it all
        // again (found by a review: that doubled the server's CPU per request).
        if self.inbound.heldStartsWithRequest, connection.waitsForUserRequestRoom() { return }
        self.inbound.endPause()
        // While the loop's turn is given up, what is kept is handed out when it comes back (resumeAfterYield).
        guard !self.inbound.isYielding else { return }
        self.handOutKept(context: context, connection: connection)
        self.readIfHeld(context: context)
    }

    /// Hands out the frames kept from earlier reads, as one read batch, if there are any.
    func handOutKept(context: ChannelHandlerContext, connection: Connection) {
        guard self.inbound.partial != nil else { return }
        connection.readBatchStarted()
        var nothing = ByteBuffer()
        self.decode(&nothing, context: context, connection: connection)
        connection.readBatchEnded()
        // What was kept may be less now (a large frame handed out at last).
        if self.incomingBytes != nil { self.chargeKeptBytes(context: context) }
    }

    /// A frame was handed out before the handshake was reported: the first one after the peer's hello reports it,
    /// so that a going-away frame sent right after the hello (an authorization refusal) is known by then.
    @inline(never)
    private func frameHandledBeforeEstablished(_ connection: Connection) {
        self.state.helloDecoded()
        if self.state.frameHandled() == .reportHandshake { self.reportHandshake(connection) }
    }

    /// Tells the owner the handshake is complete, and stops the handshake timer.
    private func reportHandshake(_ connection: Connection) {
        self.handshakeTimer.take()?.cancel()
        self.lifecycle.handshakeCompleted(connection)
    }

    /// Hands the message, request, reply or call message that `header` found at the front of `incoming` to the
    /// handler, the request that waits for it or the call, as the dispatch of a ``Frame`` does for the same frames on a
    /// connection without descriptors, and moves `incoming`'s reader index past it.
    ///
    /// Each branch takes the payload as a slice where it needs it: lent to a handler as a temporary, it costs one
    /// retain and one release of the read buffer's storage, where a payload taken out of a ``FrameDecoder/DataFrame``
    /// was retained once more (found in a profile of W3's server: a fifth of its time in retain and release).
    @inline(__always)
    static func dispatch<Handler: ConnectionHandler>(
        _ header: FrameDecoder.DataFrameHeader,
        in incoming: inout ByteBuffer,
        to handler: inout Handler,
        connection: Connection,
        maximumRequests: Int
    ) -> DecodeStep {
        let index = incoming.readerIndex + header.payloadOffset
        defer { incoming.moveReaderIndex(forwardBy: header.frameLength) }
        switch header.kind {
        case .message:
            handler.didReceiveMessage(incoming.getSlice(at: index, length: header.payloadLength)!, on: connection)
        case .request:
            guard let (unanswered, reply) = connection.requestReceived(id: header.id, bytes: header.payloadLength) else {
                return .violation(Connection.floodError)
            }
            // Kept until answered: not as a slice that holds its whole read buffer.
            handler.didReceiveRequest(
                incoming.getSlice(at: index, length: header.payloadLength)!.compacted(), reply: reply, on: connection)
            if unanswered >= maximumRequests { return .pauseReading }
        case .reply:
            connection.replyReceived(
                id: header.id, result: .success(incoming.getSlice(at: index, length: header.payloadLength)!))
        default:
            if let violation = connection.callFrameReceived(
                .message(incoming.getSlice(at: index, length: header.payloadLength)!), id: header.id)
            {
                return .violation(violation)
            }
        }
        return .next
    }

    /// Hands a frame to the handler, to the request that waits for it, or to the connection.
    static func dispatch<Handler: ConnectionHandler>(
        _ frame: Frame,
        to handler: inout Handler,
        connection: Connection,
        maximumRequests: Int
    ) -> DecodeStep {
        if let passing = connection.descriptorPassing,
            let step = Self.dispatchPassingDescriptors(
                frame, passing: passing, to: &handler, connection: connection, maximumRequests: maximumRequests
            )
        {
            return step
        }
        switch frame {
        case .message(let message):
            handler.didReceiveMessage(message, on: connection)
        case .request(let id, let payload):
            guard let (unanswered, reply) = connection.requestReceived(id: id, bytes: payload.readableBytes) else {
                return .violation(Connection.floodError)
            }
            // Kept until answered: not as a slice that holds its whole read buffer.
            handler.didReceiveRequest(payload.compacted(), reply: reply, on: connection)
            if unanswered >= maximumRequests { return .pauseReading }
        case .reply(let id, let payload):
            connection.replyReceived(id: id, result: .success(payload))
        case .errorReply(let id, let message):
            connection.replyReceived(id: id, result: .failure(SocketIPCError(.remoteError, message)))
        case .goAway(let reason, let message):
            connection.peerIsGoingAway(reason, message: message)
            if reason != .normal { return .peerFailed }
        case .call(let id, let callFrame):
            // A cancel counts before it is handed on, while its call's handler (if it has one running) is there to see.
            var throttle: Duration?
            if case .cancel = callFrame { throttle = connection.cancelReceived(id: id) }
            if let violation = connection.callFrameReceived(callFrame, id: id) { return .violation(violation) }
            if let throttle { return .throttle(throttle) }
        case .ping(let id):
            if let flood = connection.answerOwed() { return .violation(flood) }
            connection.pingReceived(id: id)
        case .pong(let id):
            connection.pongReceived(id: id)
        case .descriptors:
            // Unreachable: the decoder refuses kind 0x0D unless both hellos set the descriptors flag.
            return .violation(SocketIPCError(.protocolViolation, "a descriptors frame on a connection without them"))
        case .sharedPayload:
            return .violation(
                SocketIPCError(.protocolViolation, "a shared-payload frame without a descriptors frame before it")
            )
        }
        return .next
    }

    /// Dispatches a descriptors frame, and the frame after it with the descriptors it announced; returns `nil` for
    /// any other frame, which ``dispatch(_:to:connection:maximumRequests:)`` hands out as usual.
    @inline(never)
    static func dispatchPassingDescriptors<Handler: ConnectionHandler>(
        _ frame: Frame,
        passing: DescriptorPassing,
        to handler: inout Handler,
        connection: Connection,
        maximumRequests: Int
    ) -> DecodeStep? {
        if case .descriptors(let count) = frame {
            if let violation = passing.announce(count) { return .violation(violation) }
            return .next
        }
        guard let descriptors = passing.takeAnnounced() else { return nil }
        if case .sharedPayload(let kind, let id, let length) = frame {
            // The one descriptor is the shared memory holding the payload: map it; hand a message or request to the
            // handler mapped (its default copies it), and any other frame as if its payload had come through the socket.
            let memory = descriptors.take()
            guard memory.count == 1 else {
                closePassedDescriptors(memory.map(\.rawValue), passedBy: descriptors.passedBy)
                return .violation(
                    SocketIPCError(.protocolViolation, "a shared payload came with \(memory.count) descriptors, not 1")
                )
            }
            // A reply nobody waits for is dropped unmapped: its copy would cost the loop as much as a wanted one's
            // (found by a review: sent while requests were paused, they held the loop a second).
            if kind == .reply, !connection.waitsForReply(id) {
                closePassedDescriptors(memory.map(\.rawValue), passedBy: descriptors.passedBy)
                return .next
            }
            // So is a call message that its call would drop or refuse.
            if kind == .callMessage, !connection.callTakesSharedMessage(id: id, length: length) {
                closePassedDescriptors(memory.map(\.rawValue), passedBy: descriptors.passedBy)
                return .next
            }
            let mapping: MappedPayload
            do {
                mapping = try SharedPayload.map(memory[0].rawValue, length: length, passedBy: descriptors.passedBy)
            } catch {
                return .violation(error as? SocketIPCError ?? SocketIPCError(.protocolViolation, "\(error)"))
            }
            switch kind {
            case .message:
                handler.didReceiveMessage(mapping, on: connection)
                return .yieldTurn
            case .request:
                guard let (unanswered, reply) = connection.requestReceived(id: id, bytes: length) else {
                    return .violation(Connection.floodError)
                }
                handler.didReceiveRequest(mapping, reply: reply, on: connection)
                return unanswered >= maximumRequests ? .pauseReadingAfterSharedPayload : .yieldTurn
            default:
                break
            }
            let payload = mapping.copyToBuffer(allocator: connection.channel.allocator)
            let carried: Frame =
                switch kind {
                case .request: .request(id: id, payload: payload)
                case .reply: .reply(id: id, payload: payload)
                case .callMessage: .call(id: id, .message(payload))
                default: .message(payload)
                }
            let step = Self.dispatch(carried, to: &handler, connection: connection, maximumRequests: maximumRequests)
            return step.isNext ? .yieldTurn : step
        }
        switch frame {
        case .message(let message):
            handler.didReceiveMessage(message, descriptors: descriptors, on: connection)
        case .request(let id, let payload):
            guard let (unanswered, reply) = connection.requestReceived(id: id, bytes: payload.readableBytes) else {
                return .violation(Connection.floodError)
            }
            handler.didReceiveRequest(
                payload.compacted(), descriptors: descriptors, reply: reply, on: connection
            )
            if unanswered >= maximumRequests { return .pauseReading }
        case .reply(let id, let payload):
            passing.replyArrived(id, descriptors: descriptors)
            connection.replyReceived(id: id, result: .success(payload))
        case .call(let id, let callFrame):
            guard case .message = callFrame else { fallthrough }
            if let violation = connection.callFrameReceived(callFrame, id: id, descriptors: descriptors) {
                return .violation(violation)
            }
        default:
            descriptors.close()
            return .violation(
                SocketIPCError(
                    .protocolViolation,
                    "a descriptors frame must come right before a message, request, reply or call message, not before "
                        + frame.kindDescription
                )
            )
        }
        return .next
    }
}
