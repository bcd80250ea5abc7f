import NIOCore
import SocketIPC
import SocketIPCTesting
import Testing

/// A connect timeout that fires just after the server's hello has completed the connect: the connection handed to
/// the caller must stay open (found by a review of the CLI: `call --timeout=0.0001` failed with connectionClosed).
@Suite("A connect timeout that fires after the hello", .timeLimit(.minutes(2)))
struct ConnectTimeoutRaceTests {
    @Test("a connect that succeeds gives an open connection, however short its connect timeout: before, the timeout closed it under the caller when it fired between the hello and the caller's resumption")
    func connectedConnectionStaysOpen() async throws {
        try await withFramedTestServer(makeHandler: { AsyncRequestHandler { request, _ in request } }) { _, path in
            var connected = 0
            // Timeouts from 100 µs to 20 ms: the short ones often fire while the caller's task resumes after the
            // hello, and the long ones let most connects complete.
            for step in 1...200 {
                var configuration = ClientConfiguration()
                configuration.connectTimeout = .microseconds(100 * step)
                guard let connection = try? await Client.connect(to: path, configuration: configuration) else { continue }
                connected += 1
                do {
                    let reply = try await connection.request(ByteBuffer(string: "still open"), timeout: .seconds(30))
                    #expect(String(buffer: reply) == "still open")
                } catch {
                    Issue.record("the connection handed over (connect timeout \(100 * step) µs) failed: \(error)")
                }
                connection.close()
                await connection.waitUntilClosed()
            }
            #expect(connected > 0, "no connect completed within 20 ms")
        }
    }
}
