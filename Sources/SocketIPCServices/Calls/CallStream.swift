import NIOCore
import SocketIPCCore
import Synchronization

/// One call on one side, with its frames' bytes: what the typed streams and the router read from and write to.
///
/// Its state is a ``CallStateMachine`` under a lock: messages received and not yet read, credit both ways, who
/// waits. It sends its own frames through the connection: messages (waiting for credit and for the socket), the
/// end, credit as the reader consumes, and (on the caller's side) a cancel.
final class CallStream: Sendable, WriteWaitOwner {
    /// What a read returns: the next message, or the peer's end with its status.
    enum Inbound: Sendable {
        /// A message, with the descriptors it brought (the reader owns them), if any.
        case message(ByteBuffer, descriptors: ReceivedDescriptors?)
        case end(CallStatus)
    }

    /// The call's state; its waiters are resumed exactly once, since the state machine hands each out once (it takes
    /// it out of its state), so unchecked continuations do (a checked one allocates a canary per wait).
    typealias Machine = CallStateMachine<UnsafeContinuation<Inbound, any Error>, UnsafeContinuation<Resumed, any Error>>

    /// What a producer waiting for credit is resumed with.
    enum Resumed: Sendable {
        /// Its message's cost is taken: send it.
        case send
        /// Strict credit: its message is parked (its cost is this many bytes): tell the peer, and go on.
        case parked(cost: Int)
        /// Strict credit: nothing is taken; ask again.
        case retry
    }

    let id: UInt32
    let method: String
    let connection: Connection
    /// The share of its event loop's time that a run of sends on credit may take (see ``runLength``).
    let loopShare: EventLoopShare
    /// Whether this side opened the call.
    let isCaller: Bool
    /// On the handler's side: whether the handler writes a stream of responses (server or bidirectional streaming),
    /// which a server's graceful shutdown ends at once.
    let streamsResponses: Bool
    /// The call's state machine, and the descriptors of its messages, under one lock (taken once per message each
    /// way).
    let state: Mutex<Locked>
    /// The handler's side: fires once when the call must stop (the caller cancelled, the deadline passed, the
    /// connection closed), or when the handler finished; see ``waitUntilStopped()``.
    let stop = Mutex<Stop>(Stop())
    struct Locked {
        var machine = Machine()
        /// Messages and bytes sent on credit since the sender last waited for credit, or last gave its event loop
        /// a turn (``send(_:descriptors:)``).
        var sentInRun = 0
        var bytesInRun = 0
        /// The limits of the run in progress: ``CallStream/runLength`` and ``CallStream/runBytes``, shared with the
        /// other long runs on the event loop; set when a run starts.
        var runLimit = (messages: 0, bytes: 0)
        /// Messages read without waiting since the reader last waited or gave the other tasks a turn
        /// (``next()``, off the event loop).
        var readInRun = 0
        /// The descriptors of messages received and not yet read, by the messages' numbers: messages are read in
        /// the order they arrived, so the reader's count finds them.
        var descriptors = MessageDescriptors()
        /// Strict credit: the message parked until credit covers it (``CallStateMachine/SendAction/park(cost:)``),
        /// with its descriptors (closed if it never goes).
        var parked: (payload: ByteBuffer, descriptors: DuplicatedDescriptors?)?
        /// Strict credit: this side's end, waiting for the parked message.
        var endAfterParked: CallStatus?
        /// Who waits until nothing is parked (``waitUntilParkedSent()``).
        var parkedWaiter: UnsafeContinuation<Void, Never>?
        /// The ids of the connection's waits for room that writers of this call are in (``WriteWaitOwner``).
        var writeWaitIDs: [UInt64] = []
        /// Sends of this call between taking their credit and queueing their message (waiting for room): an end
        /// (``finish(_:)``) waits for them, so that it never overtakes a message whose write returns success.
        var sendsInProgress = 0
        /// This side's end, waiting for the sends in progress.
        var endAfterSends: CallStatus?

        /// Counts the next message as read (handed to the reader); returns the descriptors it brought, if any, and adds
        /// to `credit` what they give back when descriptors cost credit (``CallStateMachine/descriptorsConsumed(_:)``).
        @inline(__always)
        mutating func takeNextDescriptors(credit: inout Int) -> ReceivedDescriptors? {
            guard let taken = self.descriptors.takeNext() else { return nil }
            credit += self.machine.descriptorsConsumed(taken.count)
            return taken
        }

        /// Forgets the parked message and the end that waited for it (the call failed, or its other side ended it);
        /// returns who waited for it to go.
        mutating func dropParked() -> UnsafeContinuation<Void, Never>? {
            self.parked = nil
            self.endAfterParked = nil
            return self.parkedWaiter.take()
        }
    }

    struct MessageDescriptors {
        /// Messages received, and read, so far.
        var received: UInt64 = 0
        var read: UInt64 = 0
        /// The descriptors of received messages not yet read, by message number, in order.
        var waiting: [(number: UInt64, descriptors: ReceivedDescriptors)] = []
        /// How many descriptors ``waiting`` holds.
        var held = 0

        /// Counts the next message as read (handed to the reader); returns the descriptors it brought, if any.
        @inline(__always)
        mutating func takeNext() -> ReceivedDescriptors? {
            self.read += 1
            guard let first = self.waiting.first, first.number == self.read else { return nil }
            self.waiting.removeFirst()
            self.held -= first.descriptors.count
            return first.descriptors
        }
    }

    struct Stop {
        var reason: StopReason?
        /// The task that runs the handler, while it runs it: cancelled when the call must stop. Set and cleared by
        /// that task itself (``runStoppable(_:)``).
        var handlerTask: HandlerTask?
        /// Cancels of ``handlerTask`` in progress (outside the lock, since a cancel runs the task's cancellation
        /// handlers, which may close the connection and so come back here): the task does not end before they do.
        var cancelsInProgress = 0
        /// The handler's task, waiting at its end for the cancels in progress.
        var endWaiter: UnsafeContinuation<Void, Never>?
    }

    /// The task that runs a handler, to cancel it from another thread; see ``Stop/handlerTask``.
    struct HandlerTask: @unchecked Sendable {
        let task: UnsafeCurrentTask
    }

    /// Why a handler's call stops before its handler is done.
    enum StopReason: Sendable, Equatable {
        /// The caller sent cancel with reason `0x00`.
        case cancelledByCaller
        /// The deadline passed (the caller's cancel with reason `0x01`, or this side's own clock).
        case deadlineExceeded
        /// The connection closed.
        case connectionClosed
        /// The server is shutting down, and the call's response stream ends now.
        case serverGoingAway
        /// The handler returned or threw: nothing to stop.
        case finished
        /// A peer without strict credit made the connection's calls hold more than they may beyond their windows, and
        /// this call's message tipped it over (``CallMultiplexer/checkHeldBeyondWindows(on:)``).
        case heldBeyondWindows
        /// The connection's calls held more received descriptors, unread, than a connection may
        /// (``CallMultiplexer/checkHeldDescriptors(on:)``), and this call's message tipped it over.
        case heldTooManyDescriptors
        /// The caller sent, or asked for credit for, a request of `size` bytes, above its method's `limit`
        /// (``ServiceMethod/maximumRequestSize``).
        case requestTooLarge(size: Int, limit: Int)
    }

    /// On the handler's side: the largest request message the method takes (``ServiceMethod/maximumRequestSize``,
    /// within the connection's maximum message size); `Int.max` on the caller's side.
    let maximumRequestSize: Int
    /// What a message of ``maximumRequestSize`` costs in credit (its frame's bytes, and the most descriptors a message
    /// may carry when they cost credit); `Int.max` without a limit.
    let maximumRequestCost: Int

    /// - Parameter maximumRequestSize: On the handler's side, the method's ``ServiceMethod/maximumRequestSize``.
    init(
        id: UInt32,
        method: String,
        connection: Connection,
        isCaller: Bool,
        streamsResponses: Bool = false,
        maximumRequestSize: Int? = nil
    ) {
        self.id = id
        self.method = method
        self.maximumRequestSize = maximumRequestSize.map { max($0, 0) } ?? .max
        let descriptorsCost = connection.maximumDescriptorCreditCost
        self.maximumRequestCost =
            maximumRequestSize.map { Machine.frameCost(payloadLength: min(max($0, 0), Int(UInt32.max))) + descriptorsCost }
            ?? .max
        self.connection = connection
        self.loopShare = connection.eventLoopShare()
        self.isCaller = isCaller
        self.streamsResponses = streamsResponses
        self.state = Mutex(
            Locked(
                machine: Machine(
                    strictCredit: connection.peerSendsWithinCredit,
                    grantsWhileWriting: isCaller,
                    chargesDescriptors: connection.chargesDescriptorCredit
                )
            )
        )
    }
}
