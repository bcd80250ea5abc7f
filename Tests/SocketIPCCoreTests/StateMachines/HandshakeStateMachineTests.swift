import Testing

@testable import SocketIPCCore

@Suite("HandshakeStateMachine")
struct HandshakeStateMachineTests {
    /// A machine whose connection is set up: its hello is sent, the peer's awaited.
    private static func awaitingHello() -> HandshakeStateMachine {
        var machine = HandshakeStateMachine()
        #expect(machine.connectionOpened() == .sendHelloAndStartTimers)
        return machine
    }

    @Test("nothing is handed out before the connection is set up; setting it up sends the hello once")
    func opening() {
        var machine = HandshakeStateMachine()
        #expect(machine.state == .opening)
        #expect(!machine.mayHandleFrames)
        #expect(machine.connectionOpened() == .sendHelloAndStartTimers)
        #expect(machine.state == .awaitingHello)
        #expect(machine.mayHandleFrames)
        #expect(machine.connectionOpened() == .none)
    }

    @Test("a frame right after the hello reports the handshake, once; the end of the read reports nothing more")
    func reportedAfterFirstFrame() {
        var machine = Self.awaitingHello()
        machine.helloDecoded()
        #expect(machine.state == .helloReceived)
        #expect(!machine.isEstablished)
        #expect(machine.frameHandled() == .reportHandshake)
        #expect(machine.isEstablished)
        #expect(machine.frameHandled() == .none)
        #expect(machine.readHandled() == .none)
    }

    @Test("a hello alone in its read is reported at the end of the read")
    func reportedAtEndOfRead() {
        var machine = Self.awaitingHello()
        #expect(machine.readHandled() == .none, "no hello yet: nothing to report")
        machine.helloDecoded()
        #expect(machine.readHandled() == .reportHandshake)
        #expect(machine.readHandled() == .none)
    }

    @Test("the handshake timer fails a connection still waiting for the hello, and nothing after it is established")
    func handshakeTimeout() throws {
        var late = Self.awaitingHello()
        guard case .failTimedOut(let error) = late.handshakeTimedOut(after: .seconds(3)) else {
            Issue.record("the timer of a connection without the peer's hello must fail it")
            return
        }
        #expect(error.code == .timedOut)
        #expect(error.message.contains("3"))
        #expect(!late.mayHandleFrames)
        #expect(late.failure == error)
        #expect(late.handshakeTimedOut(after: .seconds(3)) == .none, "it fires once")

        var established = Self.awaitingHello()
        established.helloDecoded()
        _ = established.readHandled()
        #expect(established.handshakeTimedOut(after: .seconds(3)) == .none)
        #expect(established.mayHandleFrames)
    }

    @Test("a timer that fires while the read with the hello is handled does not fail it: the hello is complete")
    func timeoutWhileHelloReceived() {
        var machine = Self.awaitingHello()
        machine.helloDecoded()
        #expect(machine.handshakeTimedOut(after: .seconds(1)) == .none)
        #expect(machine.readHandled() == .reportHandshake)
    }

    @Test("a first frame that closes the connection still reports the handshake, once, before the close")
    func reportedWhenFirstFrameCloses() {
        var machine = Self.awaitingHello()
        machine.helloDecoded()
        // The frame's handler aborted the connection: the channel closed while the frame was handled.
        #expect(machine.channelClosed() == .reportClosed(failure: nil))
        #expect(machine.frameHandled() == .reportHandshake)
        #expect(machine.readHandled() == .none)
    }

    @Test("a protocol failure tells the peer once; the close then reports it")
    func protocolFailure() {
        var machine = Self.awaitingHello()
        let error = SocketIPCError(.protocolViolation, "unknown frame kind 0x09")
        #expect(machine.protocolFailed(error) == .tellPeerAndClose(error))
        #expect(machine.protocolFailed(error) == .none)
        #expect(!machine.mayHandleFrames)
        #expect(machine.channelClosed() == .reportClosed(failure: error))
        #expect(machine.channelClosed() == .none)
    }

    @Test("a channel error closes without telling the peer, and the first failure is the one reported")
    func channelFailure() {
        var machine = Self.awaitingHello()
        let reset = SocketIPCError(.connectionClosed, "the connection failed: Connection reset by peer")
        #expect(machine.channelFailed(reset) == .close)
        #expect(machine.channelFailed(SocketIPCError(.connectionClosed, "later")) == .close)
        #expect(machine.channelClosed() == .reportClosed(failure: reset))
    }

    @Test("an orderly close reports no failure, also for a connection that never finished opening")
    func orderlyClose() {
        var established = Self.awaitingHello()
        established.helloDecoded()
        _ = established.frameHandled()
        #expect(established.channelClosed() == .reportClosed(failure: nil))

        var opening = HandshakeStateMachine()
        #expect(opening.channelClosed() == .reportClosed(failure: nil))
        #expect(opening.connectionOpened() == .none, "a connection closed while opening is not set up")
    }
}
