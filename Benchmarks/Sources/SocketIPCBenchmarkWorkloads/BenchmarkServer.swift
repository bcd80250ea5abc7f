import Logging
import NIOCore
import SocketIPC

/// The server side of the benchmark workloads, written with SocketIPC's public API as a user would.
///
/// `seed` uses an EOF-style server that acknowledges each message with its 4-byte big-endian length. The framed
/// workloads use a framed server whose handler runs on the event loop: a request starting with `B` (barrier) is
/// answered with the 8-byte count of one-way messages received on the connection; any other request is echoed.
public enum BenchmarkServer {
    /// Payload byte 0 of a barrier request.
    static let barrier = UInt8(ascii: "B")

    /// Makes the server for `workload` on `path`; with `mapsSharedPayloads`, its handler takes one-way messages that
    /// come in shared memory mapped (`MappedPayload`), without copying them.
    public static func make(
        path: String,
        workload: Workload,
        busyPoll: BusyPolling = .adaptive(),
        maximumDescriptors: Int = 0,
        sharedPayloadThreshold: Int? = nil,
        mapsSharedPayloads: Bool = false,
        logger: Logger,
        onServerRunning: @escaping @Sendable (SocketPath) async -> Void = { _ in }
    ) -> Server {
        var configuration = ServerConfiguration(path: path)
        // The workloads open thousands of connections from one user, as fast as they can (W5, W6).
        configuration.maximumConnections = 100_000
        configuration.maximumConnectionsPerUser = 100_000
        configuration.maximumPendingHandshakesPerUser = 100_000
        configuration.backlog = 4096
        configuration.shutdownGracePeriod = .seconds(1)
        configuration.connection.busyPolling = busyPoll
        configuration.connection.maximumDescriptorsPerMessage = maximumDescriptors
        if let sharedPayloadThreshold { configuration.connection.sharedPayloadThreshold = sharedPayloadThreshold }
        if workload == .seed {
            return Server.eof(
                configuration: configuration,
                logger: logger,
                onServerRunning: onServerRunning,
                handler: .onEventLoop { message, _ in
                    var acknowledgement = ByteBuffer()
                    acknowledgement.writeInteger(UInt32(message.readableBytes))
                    return acknowledgement
                }
            )
        }
        if workload.isTyped {
            let router = TypedWorkloads.router(codec: TypedWorkloads.codec(for: workload))
            return Server.framed(configuration: configuration, logger: logger, onServerRunning: onServerRunning) {
                ServiceConnectionHandler(router: router)
            }
        }
        return Server.framed(configuration: configuration, logger: logger, onServerRunning: onServerRunning) {
            WorkloadHandler(mapsSharedPayloads: mapsSharedPayloads)
        }
    }
}

/// Counts one-way messages; answers barriers with the count and echoes every other request.
struct WorkloadHandler: ConnectionHandler {
    /// Whether a one-way message in shared memory is counted as mapped, or first copied as the default does.
    let mapsSharedPayloads: Bool
    private var oneWayCount: UInt64 = 0

    init(mapsSharedPayloads: Bool) {
        self.mapsSharedPayloads = mapsSharedPayloads
    }

    mutating func didReceiveMessage(_ message: ByteBuffer, on connection: Connection) {
        self.oneWayCount &+= 1
    }

    mutating func didReceiveMessage(_ message: MappedPayload, on connection: Connection) {
        if self.mapsSharedPayloads {
            self.oneWayCount &+= 1
        } else {
            self.didReceiveMessage(message.copyToBuffer(), on: connection)
        }
    }

    mutating func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        if request.getInteger(at: request.readerIndex, as: UInt8.self) == BenchmarkServer.barrier {
            var count = ByteBuffer()
            count.writeInteger(self.oneWayCount)
            reply.succeed(count)
        } else {
            reply.succeed(request)
        }
    }
}
