import NIOCore
import Testing

@_spi(SocketIPCRuntime) @testable import SocketIPCCore

@Suite("ConnectionAdmissions")
struct ConnectionAdmissionsTests {
    private static func peer(_ uid: UInt32) -> PeerCredentials {
        PeerCredentials(processID: 1, userID: uid, groupID: uid)
    }

    @Test("a user at its pending-handshake limit has its next connection parked, served in order as handshakes end")
    func parking() {
        var admissions = ConnectionAdmissions(maximumConnections: 100, maximumConnectionsPerUser: 10, maximumPendingHandshakesPerUser: 2)
        #expect(admissions.admit(1, descriptor: 11, peer: Self.peer(7)) == .admitted)
        #expect(admissions.admit(2, descriptor: 12, peer: Self.peer(7)) == .admitted)
        #expect(admissions.admit(3, descriptor: 13, peer: Self.peer(7)) == .parked)
        #expect(admissions.admit(4, descriptor: 14, peer: Self.peer(7)) == .parked)
        // Another user is not affected.
        #expect(admissions.admit(5, descriptor: 15, peer: Self.peer(8)) == .admitted)
        #expect(admissions.count == 5)

        #expect(admissions.handshakeEnded(1)?.id == 3)
        #expect(admissions.handshakeEnded(1) == nil, "a handshake ends once")
        // A connection that closes before its handshake frees its slot too.
        #expect(admissions.closed(2) == (true, ConnectionAdmissions.Parked(id: 4, descriptor: 14, peer: Self.peer(7))))
        #expect(admissions.closed(2) == (false, nil), "a close counts once")
        // A connection that closes after its handshake frees no handshake slot.
        #expect(admissions.closed(1) == (true, nil))
        #expect(admissions.count == 3)
    }

    @Test("the connection limits refuse: in all and per user; a closed connection frees its slot")
    func limits() {
        var admissions = ConnectionAdmissions(maximumConnections: 3, maximumConnectionsPerUser: 2, maximumPendingHandshakesPerUser: 1)
        #expect(admissions.admit(1, descriptor: 11, peer: Self.peer(7)) == .admitted)
        #expect(admissions.admit(2, descriptor: 12, peer: Self.peer(7)) == .parked)
        #expect(admissions.admit(3, descriptor: 13, peer: Self.peer(7)) == .refused(.maximumConnectionsPerUser))
        #expect(admissions.admit(4, descriptor: 14, peer: nil) == .admitted)
        #expect(admissions.admit(5, descriptor: 15, peer: Self.peer(9)) == .refused(.maximumConnections))
        _ = admissions.closed(4)
        #expect(admissions.admit(6, descriptor: 16, peer: Self.peer(9)) == .admitted)
    }

    @Test("a connection that is only told it is refused never counts as handshaking, and is never parked")
    func notHandshaking() {
        var admissions = ConnectionAdmissions(maximumConnections: 10, maximumConnectionsPerUser: 10, maximumPendingHandshakesPerUser: 1)
        #expect(admissions.admit(1, descriptor: 11, peer: Self.peer(7)) == .admitted)
        #expect(admissions.admit(2, descriptor: 12, peer: Self.peer(7), handshaking: false) == .admitted)
        #expect(admissions.admit(3, descriptor: 13, peer: Self.peer(7)) == .parked)
        #expect(admissions.closed(2) == (true, nil))
    }

    @Test("a shutdown takes every parked connection; they stay counted until closed")
    func shutdown() {
        var admissions = ConnectionAdmissions(maximumConnections: 10, maximumConnectionsPerUser: 10, maximumPendingHandshakesPerUser: 1)
        _ = admissions.admit(1, descriptor: 11, peer: Self.peer(7))
        _ = admissions.admit(2, descriptor: 12, peer: Self.peer(7))
        _ = admissions.admit(3, descriptor: 13, peer: Self.peer(8))
        _ = admissions.admit(4, descriptor: 14, peer: Self.peer(8))
        let parked = admissions.takeAllParked().map(\.id).sorted()
        #expect(parked == [2, 4])
        #expect(admissions.count == 4)
        #expect(admissions.handshakeEnded(1) == nil)
        _ = admissions.closed(2)
        _ = admissions.closed(4)
        #expect(admissions.count == 2)
    }

    @Test("a parked connection whose handshake time is up is forgotten, once; a served one is not expired")
    func expiry() {
        var admissions = ConnectionAdmissions(maximumConnections: 10, maximumConnectionsPerUser: 10, maximumPendingHandshakesPerUser: 1)
        _ = admissions.admit(1, descriptor: 11, peer: Self.peer(7))
        _ = admissions.admit(2, descriptor: 12, peer: Self.peer(7), handshakeDeadline: .uptimeNanoseconds(5))
        _ = admissions.admit(3, descriptor: 13, peer: Self.peer(7))
        #expect(admissions.expireParked(1) == nil, "a served connection is timed by its handler")
        let expired = admissions.expireParked(2)
        #expect(expired?.descriptor == 12)
        #expect(expired?.handshakeDeadline == .uptimeNanoseconds(5))
        #expect(admissions.expireParked(2) == nil)
        #expect(admissions.count == 2)
        // The next parked one keeps its place: it is the one a finished handshake hands out.
        #expect(admissions.handshakeEnded(1)?.id == 3)
        #expect(admissions.expireParked(3) == nil, "no longer parked")
    }
}
