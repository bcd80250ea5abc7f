import Testing

@testable import SocketIPCCore

@Suite("SocketIPCError")
struct SocketIPCErrorTests {
    struct Underlying: Error, CustomStringConvertible {
        var description: String { "EPIPE from below" }
    }

    @Test("an error keeps its cause as thrown; its debug description names it, its description stays the message")
    func keepsCause() throws {
        let error = SocketIPCError(.connectionClosed, "the connection failed", cause: Underlying())
        let cause = try #require(error.cause as? Underlying)
        #expect(cause.description == "EPIPE from below")
        #expect(error.description == "SocketIPCError.connectionClosed: the connection failed")
        #expect(error.debugDescription.hasPrefix("SocketIPCError.connectionClosed: the connection failed (caused by: "))
        #expect(error.debugDescription.contains("EPIPE from below"))
        #expect(SocketIPCError(.timedOut, "late").description == "SocketIPCError.timedOut: late")
    }

    @Test("an error records where it was made")
    func recordsLocation() {
        let line = #line + 1
        let error = SocketIPCError(.invalidState, "twice")
        #expect(error.file == #fileID)
        #expect(error.line == line)
        #expect(error.debugDescription.hasSuffix("at \(#fileID):\(line)"))
    }

    @Test("equality and hashing look at code, message and path only")
    func equality() {
        let first = SocketIPCError(.addressInUse, "busy", path: "/tmp/a.sock", cause: Underlying())
        let second = SocketIPCError(.addressInUse, "busy", path: "/tmp/a.sock")
        #expect(first == second)
        #expect(Set([first, second]).count == 1)
        #expect(first != SocketIPCError(.addressInUse, "busy", path: "/tmp/b.sock"))
        #expect(first != SocketIPCError(.pathOccupied, "busy", path: "/tmp/a.sock"))
    }
}
