import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import Testing

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// A ServiceClient makes a call of any method again when nothing of it reached the server, as gRPC retries an RPC that
// never left the client; one that may have reached it is made again only if its method is idempotent.
extension ServiceClientTests {
    @Test("a non-idempotent call whose first byte the socket refused (EPIPE: the server had shut its reading side down, as a dying server's socket does) is made again on the next server")
    func unsentCallRetried() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            var listening = true
            defer { if listening { close(listener) } }
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            try await withRunningClient(client) {
                // The raw server reads the client's hello, shuts its reading side down, then sends its own: the
                // client's connection is ready, and every byte it writes from now on is refused with EPIPE, with no
                // sign of it until it writes (no end-of-stream to read).
                let peer = try await RawSocket.accepting(on: listener)
                defer { peer.close() }
                _ = try await peer.read(exactly: helloBytes.count)
                #expect(shutdown(peer.descriptor, Int32(SHUT_RD)) == 0)
                try await peer.write(serverHelloBytes)
                var states = client.states.makeAsyncIterator()
                while let state = await states.next(), state != .ready {}
                // The next server waits at the same path before the call is made.
                close(listener)
                listening = false
                unlink(path)
                try await withServiceServer(at: path) { _ in
                    // Before, this failed with connectionClosed: kv.set is not idempotent.
                    let stored = try await client.call(SetValue.self, SetValue.Request(key: "colour", value: "blue"))
                    #expect(stored)
                    #expect(try await client.call(Get.self, "colour") == "blue")
                }
            }
        }
    }

    @Test("a non-idempotent call that reached its server is not made again when the connection is then lost: it fails with connectionClosed")
    func sentCallNotRetried() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/kv.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            // The raw server reads the call's open, then closes without an answer, as a server that crashed
            // handling it; it accepts no other connection.
            let serving = Task { () -> UInt32? in
                let peer = try await RawSocket.accepting(on: listener)
                defer { peer.close() }
                _ = try await peer.read(exactly: helloBytes.count)
                try await peer.write(serverHelloBytes)
                return try await peer.readCallOpen()
            }
            let client = ServiceClient(path: path, configuration: Self.fastRetries)
            let error = try await withRunningClient(client) {
                try await #require(throws: SocketIPCError.self) {
                    try await client.call(SetValue.self, SetValue.Request(key: "colour", value: "blue"))
                }
            }
            #expect(error.code == .connectionClosed, "\(error)")
            #expect(try await serving.value != nil, "the server read the call's open")
        }
    }
}
