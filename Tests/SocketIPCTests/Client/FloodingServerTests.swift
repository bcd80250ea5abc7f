import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A hostile server against a client: frames the client must answer, sent by a peer that never reads the answers.
/// A client keeps reading while its writes wait (so that two honest peers never wait on each other), so without a
/// bound its answers would queue for ever.
@Suite("A client against a server that floods it and never reads", .timeLimit(.minutes(5)), .limitedConcurrency)
struct FloodingServerTests {
    @Test(
        "pings or requests from a server that never reads: the client closes with protocolViolation after 10,000 unread answers",
        arguments: ["ping", "request"]
    )
    func floodIsBounded(kind: String) async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/flood.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            // The client's going-away waits behind its unread answers until this server, done sending, reads: the
            // client reads and drops the rest of the flood meanwhile. Alone that takes 2 to 5 s; in a loaded full run
            // it passed the default close timeout of 10 s once, and the client closed without its going-away.
            var configuration = ClientConfiguration()
            configuration.connection.closeTimeout = .seconds(120)
            let connecting = Task { try await Client.connect(to: path, configuration: configuration) }
            let server = try await acceptConnection(on: listener)
            // The hello (version 1, calls), then 64 MiB of 9-byte pings or empty requests without reading, or less
            // if the client closes first; then everything the client wrote, until it closes.
            let frame: [UInt8] = kind == "ping" ? [0, 0, 0, 5, 0x0B, 0, 0, 0, 1] : [0, 0, 0, 5, 0x02, 0, 0, 0, 1]
            let burst = [UInt8](Array(repeating: frame, count: 4096).joined())
            let answers = try await onOwnThread { () -> [UInt8] in
                defer { close(server) }
                let hello = serverHelloBytes
                guard hello.withUnsafeBytes({ send(server, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == hello.count
                else { throw RawSocketError.failed("send", errno) }
                var sent = 0
                while sent < 64 * 1024 * 1024 {
                    let written = burst.withUnsafeBytes { send(server, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if written < 0 {
                        if errno == EINTR { continue }
                        break  // EPIPE or ECONNRESET: the client closed
                    }
                    sent += written
                }
                // A safety net, not a wait: a client that never closes fails the test after 20 s of silence.
                var limit = timeval(tv_sec: 20, tv_usec: 0)
                setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                var received: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 65536)
                while true {
                    let got = chunk.withUnsafeMutableBytes { recv(server, $0.baseAddress, $0.count, 0) }
                    if got < 0 && errno == EINTR { continue }
                    if got <= 0 { return received }
                    received += chunk[..<got]
                }
            }
            // The client's hello, its answers, and its going-away frame saying why it closed.
            var frames: [(kind: UInt8, payload: ArraySlice<UInt8>)] = []
            var offset = 8
            while offset + 4 <= answers.count {
                let length = answers[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
                guard length >= 1, offset + 4 + length <= answers.count else { break }
                frames.append((answers[offset + 4], answers[offset + 5..<offset + 4 + length]))
                offset += 4 + length
            }
            let answered = frames.filter { $0.kind == 0x0C || $0.kind == 0x04 }.count
            #expect(answered > 0 && answered < 1_000_000, "the client answered \(answered) of the \(kind)s")
            let goingAway = try #require(frames.last, "no frame from the client")
            #expect(goingAway.kind == 0x05 && goingAway.payload.first == 0x01, "the last frame: kind \(goingAway.kind)")
            #expect(String(decoding: goingAway.payload.dropFirst(), as: UTF8.self).contains("while not reading"))
            let connection = try await connecting.value
            await connection.waitUntilClosed()
            #expect(connection.closeReason?.code == .protocolViolation, "\(String(describing: connection.closeReason))")
        }
    }

    @Test(
        "a client that closes a flooding server is closed for its users at once: its request fails, isOpen and closeReason say so, before its going-away is written",
        // Three minutes: the limit counts the wait for a place among the suites of limited concurrency, which held
        // it for 40 s or more in a fresh-clone CI check (the test itself takes 3 to 6 s, loaded or not). The close
        // timeout below is an hour: the limit still tells a wait for the going-away from a close at once.
        .timeLimit(.minutes(3))
    )
    func closedForUsersAtOnce() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/flood.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            var configuration = ClientConfiguration()
            // Far longer than the test's time limit: before, the request below failed only at this close.
            configuration.connection.closeTimeout = .seconds(3600)
            let connecting = Task { try await Client.connect(to: path, configuration: configuration) }
            let server = try await acceptConnection(on: listener)
            defer { close(server) }
            // The hello, then pings without reading anything, until the socket is shut down below.
            let flooding = Task {
                try await onOwnThread {
                    let hello = serverHelloBytes
                    guard hello.withUnsafeBytes({ send(server, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == hello.count
                    else { throw RawSocketError.failed("send", errno) }
                    let burst = [UInt8](Array(repeating: [0, 0, 0, 5, 0x0B, 0, 0, 0, 1] as [UInt8], count: 4096).joined())
                    while burst.withUnsafeBytes({ send(server, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) >= 0
                        || errno == EINTR
                    {}
                }
            }
            let connection = try await connecting.value
            let error = await #expect(throws: SocketIPCError.self) {
                _ = try await connection.request(ByteBuffer(string: "never answered"))
            }
            #expect(error?.code == .protocolViolation, "\(String(describing: error))")
            #expect(!connection.isOpen)
            #expect(connection.closeReason?.code == .protocolViolation, "\(String(describing: connection.closeReason))")
            let refused = await #expect(throws: SocketIPCError.self) {
                _ = try await connection.request(ByteBuffer(string: "after"))
            }
            #expect(refused?.code == .protocolViolation)
            shutdown(server, Int32(SHUT_RDWR))
            try await flooding.value
            await connection.waitUntilClosed()
        }
    }
}
