import NIOCore
import Testing

@testable import SocketIPCCore

/// The connection's state machine on its own: events in, actions out, with strings standing in for the continuations
/// and writers that wait, and integers for the timers. Each race the runtime can meet is a sequence of events here.
@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine<String, String, Int>

    static func machine(highWatermark: Int = 1024, maximumRequests: Int = 100) -> Machine {
        Machine(writeBufferHighWatermark: highWatermark, maximumConcurrentRequests: maximumRequests)
    }

    /// The bytes of `frames`, one after the other, as PROTOCOL.md lays them out.
    static func bytes(_ frames: Frame...) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { buffer.writeFrame(frame) }
        return buffer
    }

    static func goAwayFrame(_ message: String = "bye") -> ByteBuffer { Self.bytes(.goAway(.normal, message: message)) }

    /// Runs a flush and returns what it would write, all its buffers in order, with its two flags.
    static func flush(
        _ machine: inout Machine,
        force: Bool = false
    ) -> (bytes: ByteBuffer, mayWriteDirectly: Bool, writersWaiting: Bool)? {
        guard case .write(let batch, let mayWriteDirectly, let writersWaiting) = machine.flush(force: force) else {
            return nil
        }
        var bytes = ByteBuffer()
        for var buffer in batch.buffers { bytes.writeBuffer(&buffer) }
        return (bytes, mayWriteDirectly, writersWaiting)
    }

    @discardableResult
    static func send(_ text: String, on machine: inout Machine) -> Machine.EnqueueAction {
        machine.enqueue(.message, id: 0, payload: ByteBuffer(string: text), spareBuffer: { nil })
    }

    static func register(
        _ id: UInt32,
        _ continuation: String,
        timer: Int? = nil,
        cancelled: Bool = false,
        on machine: inout Machine
    ) -> Machine.RegisterAction {
        machine.register(
            id: id,
            payload: ByteBuffer(string: "q\(id)"),
            continuation: continuation,
            isCancelled: cancelled,
            spareBuffer: { nil },
            makeTimer: { timer }
        )
    }

    /// Answers the peer's request `id`, received with `ticket`, with "a" and the id.
    static func answer(_ id: UInt32, _ ticket: ReplyTicket, on machine: inout Machine) -> Machine.AnswerAction {
        machine.answer(.reply, id: id, ticket: ticket, payload: ByteBuffer(string: "a\(id)"), spareBuffer: { nil })
    }

    /// What a ``Machine/FinishAction`` resumes, as plain values.
    static func resumed(_ action: Machine.FinishAction) -> (continuation: String, timer: Int?, close: Bool)? {
        guard case .resume(let continuation, let timer, let close) = action else { return nil }
        return (continuation, timer, close)
    }

    static func isRegistered(_ action: Machine.RegisterAction) -> Bool {
        if case .registered = action { return true }
        return false
    }

    static func failure(_ action: Machine.RegisterAction) -> (any Error)? {
        if case .fail(let error) = action { return error }
        return nil
    }

    // MARK: - Writes

    @Test("large requests count by their bytes: reading stays paused until both the number and the bytes are below their limits, and a reused id counts each request")
    func largeRequestBytes() {
        let large = Machine.largeRequestSize
        var machine = Machine(writeBufferHighWatermark: 1024, maximumConcurrentRequests: 100, maximumUnansweredRequestBytes: 2 * large)
        let first = machine.requestReceived(id: 1, bytes: 10)
        #expect(first.unanswered == 1, "a small request counts by number only")
        let second = machine.requestReceived(id: 2, bytes: large)
        #expect(second.unanswered == 2)
        #expect(machine.requestReceived(id: 3, bytes: large).unanswered == .max, "the bytes reached the limit")
        #expect(machine.pauseReading() == .pause)
        // Before, any answer resumed reading: a small one let more large ones in.
        #expect(!Self.answer(1, first.ticket, on: &machine).resumeReading, "the large ones still hold the bytes")
        #expect(Self.answer(2, second.ticket, on: &machine).resumeReading)

        var reused = Machine(writeBufferHighWatermark: 1024, maximumConcurrentRequests: 100, maximumUnansweredRequestBytes: 2 * large)
        let reusedFirst = reused.requestReceived(id: 5, bytes: large)
        #expect(reused.requestReceived(id: 5, bytes: large).unanswered == .max)
        #expect(reused.pauseReading() == .pause)
        // Before, the first answer for the id took both requests' bytes away.
        _ = Self.answer(5, reusedFirst.ticket, on: &reused)
        #expect(
            reused.requestReceived(id: 6, bytes: large).unanswered == .max, "one request of id 5 still holds its bytes"
        )

        // A small request that reuses a large one's id, answered first, gives back nothing of the large one's bytes
        // (found by a review: by id, it gave them back, and 120 MiB were held against a 16 MiB limit).
        var mixed = Machine(writeBufferHighWatermark: 1024, maximumConcurrentRequests: 100, maximumUnansweredRequestBytes: 2 * large)
        _ = mixed.requestReceived(id: 5, bytes: large)
        let small = mixed.requestReceived(id: 5, bytes: 10)
        _ = Self.answer(5, small.ticket, on: &mixed)
        #expect(
            mixed.requestReceived(id: 7, bytes: large).unanswered == .max,
            "the large request of id 5 still holds its bytes"
        )
    }

    @Test("a message is queued as its frame's bytes; the first frame schedules a flush, the next ones ride along")
    func messageFrames() throws {
        var machine = Self.machine()
        #expect(Self.send("hi", on: &machine) == .queued(scheduleFlush: true, mustWait: false))
        #expect(Self.send("there", on: &machine) == .queued(scheduleFlush: false, mustWait: false))
        #expect(machine.queuedBytes == 2 * 5 + 2 + 5)
        let flushed = try #require(Self.flush(&machine))
        // 00000003 01 "hi", 00000006 01 "there": both frames in one buffer, for one write.
        let expected: [UInt8] = [0, 0, 0, 3, 1, 0x68, 0x69, 0, 0, 0, 6, 1, 0x74, 0x68, 0x65, 0x72, 0x65]
        #expect(flushed.bytes == ByteBuffer(bytes: expected))
        #expect(flushed.mayWriteDirectly)
        #expect(!flushed.writersWaiting)
        #expect(machine.queuedBytes == 0)
        // The flush ran: the next frame needs a flush of its own; a flush of nothing writes nothing.
        #expect(Self.send("x", on: &machine) == .queued(scheduleFlush: true, mustWait: false))
        #expect(Self.flush(&machine) != nil)
        #expect(Self.flush(&machine) == nil)
    }

    @Test("a going-away frame on an idle connection is written from its own buffer: no 16 KiB coalescing buffer each")
    func goingAwayOnIdleConnection() throws {
        // At a shutdown every idle connection gets a going-away frame at once: a new coalescing buffer each would be
        // 16 KiB times the connections.
        var machine = Self.machine()
        let frame = ByteBuffer(bytes: [0, 0, 0, 2, 5, 0])
        #expect(machine.goAway(frame: frame) == .close)
        guard case .write(let batch, _, _) = machine.flush() else {
            Issue.record("the going-away frame was not flushed")
            return
        }
        #expect(batch.earlier.isEmpty)
        let tail = try #require(batch.tail)
        #expect(tail == frame)
        #expect(tail.capacity < 1024, "the frame went into a buffer of \(tail.capacity) bytes")

        // Behind frames already queued, it rides along in their buffer.
        var busy = Self.machine()
        Self.send("hi", on: &busy)
        _ = busy.goAway(frame: frame)
        let flushed = try #require(Self.flush(&busy))
        #expect(flushed.bytes == ByteBuffer(bytes: [0, 0, 0, 3, 1, 0x68, 0x69, 0, 0, 0, 2, 5, 0]))
    }

    @Test("frames queued during a read batch schedule no flush: the batch's end flushes them")
    func readBatch() throws {
        var machine = Self.machine()
        let ticket = machine.requestReceived(id: 7).ticket
        machine.readBatchStarted()
        #expect(Self.send("a", on: &machine) == .queued(scheduleFlush: false, mustWait: false))
        #expect(Self.answer(7, ticket, on: &machine).scheduleFlush == false)
        let flushed = try #require(Self.flush(&machine))
        let expected = Self.bytes(.message(ByteBuffer(string: "a")), .reply(id: 7, payload: ByteBuffer(string: "a7")))
        #expect(flushed.bytes == expected)
        #expect(Self.send("b", on: &machine) == .queued(scheduleFlush: true, mustWait: false))
    }

    @Test("a payload of 32 KiB or more is queued after its header without being copied")
    func largePayload() throws {
        var machine = Self.machine(highWatermark: 1 << 20)
        let large = ByteBuffer(repeating: 0x2A, count: OutboundQueue.largePayloadThreshold)
        Self.send("small", on: &machine)
        _ = machine.enqueue(.message, id: 0, payload: large, spareBuffer: { nil })
        Self.send("after", on: &machine)
        guard case .write(let batch, _, _) = machine.flush() else {
            Issue.record("nothing to write")
            return
        }
        // The small frame and the large one's header, then the payload itself (the same storage), then the rest.
        #expect(batch.earlier.count == 2)
        #expect(batch.earlier[1] == large)
        batch.earlier[1].withUnsafeReadableBytes { written in
            large.withUnsafeReadableBytes { original in #expect(written.baseAddress == original.baseAddress) }
        }
        var all = ByteBuffer()
        for var buffer in batch.buffers { all.writeBuffer(&buffer) }
        let expected = Self.bytes(
            .message(ByteBuffer(string: "small")),
            .message(large),
            .message(ByteBuffer(string: "after"))
        )
        #expect(all == expected)
    }

    @Test("a writer above the high watermark waits, and the flush that drains the queue releases it")
    func writerReleasedAfterFlush() throws {
        var machine = Self.machine(highWatermark: 16)
        #expect(Self.send("0123456789", on: &machine) == .queued(scheduleFlush: true, mustWait: false))
        #expect(Self.send("0123456789", on: &machine) == .queued(scheduleFlush: false, mustWait: true))
        #expect(machine.checkWritable() == .wait)
        #expect(machine.waitForWritability("writer", id: 1) == .wait)
        let flushed = try #require(Self.flush(&machine))
        #expect(flushed.writersWaiting)
        guard case .resume(let writers) = machine.writersMayResume() else {
            Issue.record("the writer was not released")
            return
        }
        #expect(writers == ["writer"])
        guard case .none = machine.writersMayResume() else {
            Issue.record("the writer was released twice")
            return
        }
        #expect(machine.checkWritable() == .proceed)
    }

    @Test("a waiting writer that is cancelled is handed back once, and is then neither released nor failed")
    func waitingWriterCancelled() throws {
        var machine = Self.machine(highWatermark: 16)
        _ = Self.send("0123456789", on: &machine)
        _ = Self.send("0123456789", on: &machine)
        #expect(machine.waitForWritability("first", id: 1) == .wait)
        #expect(machine.waitForWritability("second", id: 2) == .wait)
        #expect(machine.cancelWriteWaiter(id: 1) == "first")
        #expect(machine.cancelWriteWaiter(id: 1) == nil, "handed back twice")
        #expect(machine.cancelWriteWaiter(id: 9) == nil)
        _ = try #require(Self.flush(&machine))
        guard case .resume(let writers) = machine.writersMayResume() else {
            Issue.record("the other writer was not released")
            return
        }
        #expect(writers == ["second"])
        #expect(machine.cancelWriteWaiter(id: 2) == nil, "a released writer is not cancelled")
    }

    @Test("a writer waiting for the channel's writability is released when it comes back, not before")
    func writerReleasedByWritability() {
        var machine = Self.machine()
        guard case .none = machine.writabilityChanged(false) else {
            Issue.record("nobody waits yet")
            return
        }
        #expect(Self.send("a", on: &machine) == .queued(scheduleFlush: true, mustWait: true))
        #expect(machine.waitForWritability("writer", id: 1) == .wait)
        // The queue drained, but the channel is still full.
        _ = Self.flush(&machine)
        guard case .none = machine.writersMayResume() else {
            Issue.record("released while the channel is not writable")
            return
        }
        guard case .resume(let writers) = machine.writabilityChanged(true) else {
            Issue.record("the writer was not released")
            return
        }
        #expect(writers == ["writer"])
    }

    @Test("close while flushing: the flush took the frames, the channel closed, then the channel's write completed")
    func closeWhileFlushing() throws {
        var machine = Self.machine()
        Self.send("a", on: &machine)
        let flushed = try #require(Self.flush(&machine))
        #expect(flushed.mayWriteDirectly)
        // The socket took part of it; the rest went to the channel, which then closed.
        machine.channelWriteStarted()
        machine.socketClosed()
        guard case .fail(let requests, let writers, let error) = machine.closed(error: nil) else {
            Issue.record("the close failed nothing")
            return
        }
        #expect(requests.isEmpty && writers.isEmpty)
        #expect(error == SocketIPCError.closed)
        let flushNow = machine.channelWriteCompleted()
        #expect(flushNow == false)
        #expect(Self.send("b", on: &machine) == .fail(.closed))
        #expect(Self.flush(&machine) == nil)
        #expect(!machine.isOpen)
        #expect(machine.closeError == .closed)
    }

    @Test("while the channel holds writes, or once its socket closed, flushes do not write to the descriptor")
    func directWrites() throws {
        var machine = Self.machine()
        machine.channelWriteStarted()
        Self.send("a", on: &machine)
        #expect(try #require(Self.flush(&machine, force: true)).mayWriteDirectly == false)
        let flushNow = machine.channelWriteCompleted()
        #expect(flushNow == false)
        Self.send("b", on: &machine)
        #expect(try #require(Self.flush(&machine)).mayWriteDirectly == true)
        machine.socketClosed()
        Self.send("c", on: &machine)
        #expect(try #require(Self.flush(&machine)).mayWriteDirectly == false)
    }

    @Test("while the channel holds writes, a flush keeps less than 64 KiB queued until they complete, then flushes it")
    func flushWaitsForTheChannel() throws {
        var machine = Self.machine()
        machine.channelWriteStarted()
        // Small frames, flush after flush (a peer that pings and never reads): nothing more goes to the channel.
        for index in 0..<1000 {
            Self.send("pong \(index)", on: &machine)
            #expect(Self.flush(&machine) == nil)
        }
        let kept = machine.queuedBytes
        #expect(kept > 0 && kept < Machine.channelChunkBytes)
        // The channel's write completes: the kept frames go, in one batch, in order.
        let flushNow = machine.channelWriteCompleted()
        #expect(flushNow)
        let flushed = try #require(Self.flush(&machine))
        #expect(flushed.mayWriteDirectly)
        var expected = ByteBuffer()
        for index in 0..<1000 { expected.writeFrame(.message(ByteBuffer(string: "pong \(index)"))) }
        #expect(flushed.bytes == expected)
        // Once 64 KiB are queued, they go to the channel as one chunk even while it holds earlier writes.
        machine.channelWriteStarted()
        let chunk = String(repeating: "x", count: 1000)
        var chunkFlushes = 0
        for _ in 0..<200 {
            Self.send(chunk, on: &machine)
            if let flushed = Self.flush(&machine) {
                chunkFlushes += 1
                #expect(flushed.bytes.readableBytes >= Machine.channelChunkBytes)
                machine.channelWriteStarted()
            }
        }
        #expect(chunkFlushes == 200 * 1005 / Machine.channelChunkBytes)
        // A close's flush takes everything, whatever the channel holds.
        #expect(Self.flush(&machine, force: true) != nil)
        #expect(machine.queuedBytes == 0)
    }

    // MARK: - Requests

    @Test("cancelled before registering: the request is neither queued nor timed, and fails with CancellationError")
    func cancelBeforeRegistration() {
        var machine = Self.machine()
        var timersMade = 0
        let action = machine.register(
            id: 1,
            payload: ByteBuffer(string: "q"),
            continuation: "request 1",
            isCancelled: true,
            spareBuffer: { nil },
            makeTimer: {
                timersMade += 1
                return 9
            }
        )
        #expect(Self.failure(action) is CancellationError)
        #expect(timersMade == 0)
        #expect(machine.queuedBytes == 0)
        #expect(machine.pendingRequestCount == 0)
        // The cancellation handler ran before the registration and found nothing; it finds nothing now either.
        #expect(Self.resumed(machine.finishRequest(id: 1)) == nil)
    }

    @Test("cancelled after registering: the request ends once, with its timer; the late reply is dropped")
    func cancelAfterRegistration() throws {
        var machine = Self.machine()
        #expect(Self.isRegistered(Self.register(1, "request 1", timer: 11, on: &machine)))
        let request = Self.bytes(.request(id: 1, payload: ByteBuffer(string: "q1")))
        #expect(try #require(Self.flush(&machine)).bytes == request)
        // The cancellation handler.
        let cancelled = try #require(Self.resumed(machine.finishRequest(id: 1)))
        #expect(cancelled.continuation == "request 1")
        #expect(cancelled.timer == 11)
        #expect(!cancelled.close)
        // The reply, late.
        #expect(Self.resumed(machine.finishRequest(id: 1)) == nil)
        #expect(!machine.hasRequestsInFlight)
    }

    @Test("a reply to a timed-out request is dropped; other requests are unaffected")
    func replyAfterTimeout() throws {
        var machine = Self.machine()
        _ = Self.register(1, "request 1", timer: 11, on: &machine)
        _ = Self.register(2, "request 2", timer: 22, on: &machine)
        // Request 1's timer fires.
        #expect(try #require(Self.resumed(machine.finishRequest(id: 1))).continuation == "request 1")
        // Its reply arrives, then request 2's.
        #expect(Self.resumed(machine.finishRequest(id: 1)) == nil)
        let second = try #require(Self.resumed(machine.finishRequest(id: 2)))
        #expect(second.continuation == "request 2")
        #expect(second.timer == 22)
    }

    @Test("reading pauses at the maximum of unanswered requests, and only the first answer resumes it")
    func pauseReading() {
        var machine = Self.machine(maximumRequests: 2)
        let first = machine.requestReceived(id: 1)
        #expect(first.unanswered == 1)
        // Room was made before the channel handler asked: it keeps reading.
        #expect(machine.pauseReading() == .keepReading)
        let second = machine.requestReceived(id: 2)
        #expect(second.unanswered == 2)
        #expect(machine.pauseReading() == .pause)
        #expect(Self.answer(1, first.ticket, on: &machine).resumeReading)
        #expect(!Self.answer(2, second.ticket, on: &machine).resumeReading)
        #expect(machine.unansweredRequestCount == 0)
    }

    @Test("a second answer to one request is neither counted nor queued, even after its slot was reused")
    func secondAnswerIgnored() throws {
        var machine = Self.machine(maximumRequests: 2)
        let first = machine.requestReceived(id: 1)
        let second = machine.requestReceived(id: 2)
        #expect(machine.pauseReading() == .pause)
        #expect(Self.answer(1, first.ticket, on: &machine).resumeReading)
        let nothing = Machine.AnswerAction(scheduleFlush: false, resumeReading: false, close: false)
        #expect(Self.answer(1, first.ticket, on: &machine) == nothing)
        #expect(machine.unansweredRequestCount == 1, "before, the second answer took request 2 off the count")
        // Request 3 takes the slot request 1 freed: request 1's ticket still answers nothing.
        let third = machine.requestReceived(id: 3)
        #expect(third.unanswered == 2)
        #expect(Self.answer(1, first.ticket, on: &machine) == nothing)
        #expect(machine.unansweredRequestCount == 2)
        #expect(!Self.answer(3, third.ticket, on: &machine).resumeReading)
        #expect(!Self.answer(2, second.ticket, on: &machine).resumeReading)
        #expect(machine.unansweredRequestCount == 0)
        let flushed = try #require(Self.flush(&machine))
        let expected = Self.bytes(
            .reply(id: 1, payload: ByteBuffer(string: "a1")),
            .reply(id: 3, payload: ByteBuffer(string: "a3")),
            .reply(id: 2, payload: ByteBuffer(string: "a2"))
        )
        #expect(flushed.bytes == expected)
    }
}

@Suite("Reply tickets")
struct ReplyTicketsTests {
    @Test("a ticket redeems once; a freed slot is reused under a new generation; a ticket never issued redeems nothing")
    func redeemOnce() {
        var tickets = ReplyTickets()
        let first = tickets.take(counting: 70_000)
        let second = tickets.take()
        #expect(first != second)
        let redeemed = tickets.redeem(first)
        let redeemedAgain = tickets.redeem(first)
        #expect(redeemed == 70_000 && redeemedAgain == nil, "the first gives back the bytes it counted, once")
        let reused = tickets.take()
        #expect(reused.slot == first.slot, "the freed slot is taken again")
        #expect(reused != first)
        let staleAfterReuse = tickets.redeem(first)
        #expect(staleAfterReuse == nil)
        let reusedRedeemed = tickets.redeem(reused)
        let secondRedeemed = tickets.redeem(second)
        let neverIssued = tickets.redeem(.none)
        #expect(reusedRedeemed == 0 && secondRedeemed == 0 && neverIssued == nil)
        #expect(tickets.slotCount == 2, "never more slots than requests unanswered at once")
    }

    @Test("one request at a time takes the inline slot and makes no array; a later slot is reused under a new generation too")
    func inlineSlotThenArraySlots() {
        var tickets = ReplyTickets()
        for round in 0..<1_000 {
            let ticket = tickets.take(counting: round)
            #expect(ticket.slot == 0)
            #expect(tickets.redeem(ticket) == round)
            #expect(tickets.redeem(ticket) == nil)
        }
        #expect(tickets.generations.isEmpty && tickets.free.isEmpty, "no array for one request at a time")
        let held = tickets.take()
        let second = tickets.take(counting: 5)
        #expect(second.slot == 1)
        #expect(tickets.redeem(second) == 5)
        let third = tickets.take(counting: 7)
        #expect(third.slot == 1 && third != second, "slot 1 again, under a new generation")
        #expect(tickets.redeem(second) == nil, "the spent ticket of slot 1 answers nothing")
        #expect(tickets.redeem(third) == 7 && tickets.redeem(held) == 0)
        #expect(tickets.slotCount == 2)
    }
}
