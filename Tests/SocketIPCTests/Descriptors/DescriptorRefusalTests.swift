import CSocketIPCLinux
import CoreMetrics
import NIOCore
import SocketIPC
import SocketIPCTesting
import SocketIPCTestSupport
import SystemPackage
import Synchronization
import Testing

@testable import SocketIPCRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Whether this kernel has `SO_PASSRIGHTS` (Linux 6.16 and later).
private let kernelRefusesDescriptors: Bool = {
    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { return false }
    defer { pair.forEach { _ = close($0) } }
    return csocketipc_set_pass_rights(pair[0], 0) == 0
}()

/// A side that takes no descriptors refuses them at the peer's `sendmsg(2)` (`SO_PASSRIGHTS` off), so that a passed
/// descriptor never reaches it: the kernel would otherwise drop it in the thread that reads or closes the socket,
/// and dropping the last reference to a TCP socket with `SO_LINGER` whose send queue cannot drain blocks that thread,
/// an event loop, for as long as the peer set.
@Suite(
    "Descriptors refused at the sender where they are not taken",
    .enabled(if: kernelRefusesDescriptors, "SO_PASSRIGHTS needs Linux 6.16 or later"),
    .timeLimit(.minutes(5)),
    .limitedConcurrency
)
struct DescriptorRefusalTests {
    @Test("a server without descriptor passing: a peer's SCM_RIGHTS fails with EPERM, and its plain request is served")
    func serverRefuses() async throws {
        try await withFramedTestServer(makeHandler: { EchoHandler() }) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00])
            #expect(try await socket.read(exactly: 8).prefix(5) == [0x53, 0x49, 0x50, 0x43, 0x01])
            #expect(passPipe(over: socket.descriptor, bytes: [0, 0, 0, 1, 0x01]) == EPERM)
            // Nothing was sent, and the connection goes on.
            try await socket.write(frameBytes(kind: 0x02, id: 7, payload: Array("ping".utf8)))
            let reply = try await socket.read(exactly: 13)
            #expect(reply == frameBytes(kind: 0x03, id: 7, payload: Array("ping".utf8)))
        }
    }

    @Test("an inherited socket: a peer that connected before the server started is refused descriptors too")
    func connectedBeforeInheritedSocketWasSet() async throws {
        // A connection takes its listening socket's setting when the peer connects: this one was made while the
        // socket still took descriptors (as a socket a service manager passes does), so the server must turn it off
        // for the connection itself, where a socket of its own refused from before it listened.
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/activated.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await withRunningServer({
                Server.framed(
                    configuration: ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(listener))),
                    logger: testLogger,
                    onServerRunning: $0
                ) { EchoHandler() }
            }) { _ in
                try await socket.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00])
                #expect(try await socket.read(exactly: 8).prefix(5) == [0x53, 0x49, 0x50, 0x43, 0x01])
                #expect(passPipe(over: socket.descriptor, bytes: [0, 0, 0, 1, 0x01]) == EPERM)
                try await socket.write(frameBytes(kind: 0x02, id: 7, payload: Array("ping".utf8)))
                #expect(try await socket.read(exactly: 13) == frameBytes(kind: 0x03, id: 7, payload: Array("ping".utf8)))
            }
        }
    }

    @Test("a server that takes descriptors refuses them from a connection it has not served yet (parked for a handshake slot), and takes them once it serves it")
    func parkedConnectionRefuses() async throws {
        // Found by a review: the server turned passing on at the accept, before it decided to serve, park or refuse
        // the connection; a parked one that was then closed unserved dropped the lingering TCP sockets in its queue in
        // an event loop's close, which waited out their linger time with every connection of that loop.
        let accepted = AcceptedConnections()
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 4
        try await withFramedTestServer(
            configure: {
                $0.connection = options
                $0.maximumPendingHandshakesPerUser = 1
                $0.metricsFactory = accepted
            },
            makeHandler: { EchoHandler() }
        ) { _, path in
            // The first connection says nothing: it holds this user's one handshake slot.
            let silent = try await RawSocket.connect(to: path)
            await accepted.wait(for: 1)
            let parked = try await RawSocket.connect(to: path)
            defer { parked.close() }
            await accepted.wait(for: 2)
            #expect(passPipe(over: parked.descriptor, bytes: [0, 0, 0, 1, 0x01]) == EPERM, "parked: not served yet")
            // The slot frees: the parked connection is served, with its relay, which takes descriptors.
            silent.close()
            try await parked.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x00, 0x00, 0x00])
            #expect(try await parked.read(exactly: 8).prefix(5) == [0x53, 0x49, 0x50, 0x43, 0x01])
            #expect(passPipe(over: parked.descriptor, bytes: [0, 0, 0, 1, 0x01]) == 0, "served: its relay reads them")
        }
    }

    @Test("a client without descriptor passing: the server's SCM_RIGHTS fails with EPERM")
    func clientRefuses() async throws {
        try await withTemporarySocketDirectory { directory in
            let path = directory + "/passing.sock"
            let listener = try makeStaleSocket(at: path, listening: true)
            defer { close(listener) }
            let connecting = Task { try await Client.connect(to: path) }
            let server = try await acceptConnection(on: listener)
            defer { close(server) }
            #expect(passPipe(over: server, bytes: serverHelloBytes) == EPERM)
            connecting.cancel()
            _ = try? await connecting.value.close()
        }
    }

    @Test(
        "every listening socket refuses descriptors before any peer connects, also for a server that takes them",
        arguments: ["path", "abstract", "inherited"]
    )
    func listenersRefuse(kind: String) async throws {
        // A connection takes its listening socket's setting when the peer connects, before the server accepts it: a
        // peer the server will refuse can pass nothing from its first byte, and an admitted one only once the server
        // has turned it on for that connection (DescriptorRefusalTests.serverRefuses, SocketActivationTests).
        try await withTemporarySocketDirectory { directory in
            var configuration: ServerConfiguration
            var inherited: Int32 = -1
            switch kind {
            case "abstract":
                configuration = ServerConfiguration(path: "@socketipc-refusal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            case "inherited":
                inherited = try makeStaleSocket(at: directory + "/inherited.sock", listening: true)
                configuration = ServerConfiguration(inheritedSocket: InheritedSocket(descriptor: dup(inherited)))
            default:
                configuration = ServerConfiguration(path: directory + "/listening.sock")
            }
            defer { if inherited >= 0 { close(inherited) } }
            configuration.connection.maximumDescriptorsPerMessage = 4
            let listener = try ServerListener.open(configuration)
            defer {
                listener.owner?.release()
                close(listener.descriptor)
            }
            var on: Int32 = -1
            var length = socklen_t(MemoryLayout<Int32>.size)
            #expect(getsockopt(listener.descriptor, SOL_SOCKET, 83 /* SO_PASSRIGHTS */, &on, &length) == 0)
            #expect(on == 0)
        }
    }
}

/// Sends `bytes` with a pipe's read end attached; returns 0 if it went, or the `errno` of `sendmsg(2)`.
private func passPipe(over socket: Int32, bytes: [UInt8]) -> Int32 {
    guard let (readEnd, writeEnd) = try? SystemPackage.FileDescriptor.pipe() else { return -1 }
    defer {
        try? readEnd.close()
        try? writeEnd.close()
    }
    var descriptor = readEnd.rawValue
    let sent = bytes.withUnsafeBytes {
        csocketipc_send_with_descriptors(socket, $0.baseAddress, UInt($0.count), &descriptor, 1)
    }
    return sent < 0 ? errno : 0
}

/// Counts the connections a server admitted (`socketipc_connections_accepted_total`, which counts parked ones too),
/// so that a test can wait until the server has taken a connection off its listening socket; other metrics go nowhere.
private final class AcceptedConnections: MetricsFactory, CounterHandler, Sendable {
    private let state = Mutex<(count: Int64, waiters: [(count: Int64, continuation: CheckedContinuation<Void, Never>)])>(
        (0, [])
    )

    /// Returns once `count` connections were admitted.
    func wait(for count: Int64) async {
        await withCheckedContinuation { continuation in
            let done = self.state.withLock { state -> Bool in
                if state.count >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }

    func increment(by amount: Int64) {
        let ready = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count += amount
            let count = state.count
            let ready = state.waiters.filter { $0.count <= count }.map(\.continuation)
            state.waiters.removeAll { $0.count <= count }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }

    func reset() {}

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        label == "socketipc_connections_accepted_total" ? self : NOOPMetricsHandler.instance
    }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        NOOPMetricsHandler.instance
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler { NOOPMetricsHandler.instance }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        NOOPMetricsHandler.instance
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { NOOPMetricsHandler.instance }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
