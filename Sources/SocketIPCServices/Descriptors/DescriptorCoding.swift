import NIOCore
import SocketIPCCore
import SocketIPCRuntime
import Synchronization

/// Where ``PassedDescriptor`` finds the message's descriptors while a codec encodes or decodes it: task-local, so
/// that any `MessageCodec` carries them without knowing. Used only on connections that pass descriptors, so the
/// others pay nothing.
enum DescriptorCoding {
    /// The descriptors a message being encoded collects, in order.
    final class Outgoing: Sendable {
        private let descriptors = Mutex<[Int32]>([])

        /// Adds `descriptor`; returns its index.
        func add(_ descriptor: Int32) -> Int {
            self.descriptors.withLock {
                $0.append(descriptor)
                return $0.count - 1
            }
        }

        var collected: [Int32] { self.descriptors.withLock { $0 } }
    }

    @TaskLocal static var outgoing: Outgoing?
    @TaskLocal static var incoming: ReceivedDescriptors?

    /// Encodes `value` with `codec`, into the connection's encoding buffer (hand `payload` back with
    /// `connection.recycleEncodingBuffer(_:)` once it is queued); on a connection that passes descriptors, also
    /// returns the descriptors its ``PassedDescriptor``s hold, in order, for ``duplicate(_:of:on:)`` (none: empty).
    static func encode<Value: Encodable>(
        _ value: Value,
        codec: any MessageCodec,
        on connection: Connection
    ) throws -> (payload: ByteBuffer, descriptors: [Int32]) {
        var payload = connection.takeEncodingBuffer()
        guard connection.passesDescriptors else {
            try codec.encode(value, into: &payload)
            return (payload, [])
        }
        let outgoing = Outgoing()
        try Self.$outgoing.withValue(outgoing) { try codec.encode(value, into: &payload) }
        return (payload, outgoing.collected)
    }

    /// Waits for room for `descriptors`, those ``encode(_:codec:on:)`` found in `value`, among the descriptors queued
    /// to send on `connection`, then duplicates them for the frame to carry; `nil` for none. Room is taken before
    /// the copies are made, so that senders waiting for it hold none (found by a review: 100 streams waiting held
    /// 25,000 copies). `value` is kept alive meanwhile: its ``PassedDescriptor``s hold `descriptors` open.
    nonisolated(nonsending) static func duplicate<Value>(
        _ descriptors: [Int32],
        of value: Value,
        on connection: Connection
    ) async throws -> DuplicatedDescriptors? {
        guard !descriptors.isEmpty else { return nil }
        let (duplicates, reservation) = try await connection.duplicateForPassing(descriptors)
        withExtendedLifetime(value) {}
        return DuplicatedDescriptors(duplicates, reservation: reservation)
    }

    /// ``encode(_:codec:on:)`` for a caller's request or stream message: the codec's own error (an `EncodingError`, a
    /// codec's error type) comes as `SocketIPCError` with code `invalidMessage`, the codec's error as its cause, as a
    /// response that does not decode does (found by a review: it came untyped, where every failure of a call is a
    /// `SocketIPCError`). A handler's own encoding failure ends its call, as its other errors do.
    static func encodeOutgoing<Value: Encodable>(
        _ value: Value,
        of method: String,
        codec: any MessageCodec,
        on connection: Connection
    ) throws -> (payload: ByteBuffer, descriptors: [Int32]) {
        do {
            return try Self.encode(value, codec: codec, on: connection)
        } catch let error as SocketIPCError {
            throw error
        } catch {
            throw SocketIPCError(
                .invalidMessage,
                "a message of the call '\(method)' could not be encoded as a \(Value.self): \(error)",
                cause: error
            )
        }
    }

    /// Messages of at least this many bytes are decoded away from the event loop: 64 KiB.
    static var offLoopDecodingThreshold: Int { 64 * 1024 }

    /// Whether `message` is decoded away from the event loop (``decodeAwayFromTheLoop(_:from:descriptors:codec:)``):
    /// a message of ``offLoopDecodingThreshold`` bytes or more, read by a task that runs on `connection`'s event
    /// loop. Decoding costs CPU in proportion to what the peer sent (JSON: milliseconds per MiB, seconds for a
    /// hostile shape), which on the loop would keep its other connections waiting; gRPC Swift runs its handlers off
    /// the loop for this reason. Small messages, the common case, stay on the loop, without the two thread hops.
    @inline(__always)
    static func decodesAwayFromTheLoop(_ message: ByteBuffer, readOn connection: Connection) -> Bool {
        message.readableBytes >= Self.offLoopDecodingThreshold && connection.isOnEventLoop
    }

    /// Decodes as ``decode(_:from:descriptors:codec:)``, on the global concurrent executor; the task then goes back
    /// to its own.
    static func decodeAwayFromTheLoop<Value: Decodable & Sendable>(
        _ type: Value.Type,
        from message: ByteBuffer,
        descriptors: ReceivedDescriptors?,
        codec: any MessageCodec
    ) async throws -> Value {
        try await withTaskExecutorPreference(globalConcurrentExecutor) {
            try await Self.decodeOnTheExecutorPreferred(type, from: message, descriptors: descriptors, codec: codec)
        }
    }

    /// Decodes on the task's preferred executor (nonisolated, so not on its caller's).
    private static func decodeOnTheExecutorPreferred<Value: Decodable & Sendable>(
        _ type: Value.Type,
        from message: ByteBuffer,
        descriptors: ReceivedDescriptors?,
        codec: any MessageCodec
    ) async throws -> Value {
        try Self.decode(type, from: message, descriptors: descriptors, codec: codec)
    }

    /// Decodes a `Value` from `message` with `codec`, its ``PassedDescriptor``s taking theirs from `descriptors`.
    static func decode<Value: Decodable>(
        _ type: Value.Type,
        from message: ByteBuffer,
        descriptors: ReceivedDescriptors?,
        codec: any MessageCodec
    ) throws -> Value {
        guard let descriptors else { return try codec.decode(type, from: message) }
        return try Self.$incoming.withValue(descriptors) { try codec.decode(type, from: message) }
    }
}

/// Duplicates of the descriptors a message carries, owned until the frame takes them (``take()``); closed if it
/// never does (the call failed before the message was queued), and their room among the descriptors queued to send
/// then given back.
final class DuplicatedDescriptors: Sendable {
    private let descriptors: Mutex<[Int32]>
    /// The room taken for them on the connection, which the relay takes over with them.
    let reservation: OutgoingDescriptorReservation

    init(_ descriptors: [Int32], reservation: OutgoingDescriptorReservation) {
        self.descriptors = Mutex(descriptors)
        self.reservation = reservation
    }

    /// How many descriptors are held (0 once taken).
    var count: Int { self.descriptors.withLock { $0.count } }

    /// Hands the descriptors over to the frame; `[]` the second time.
    func take() -> [Int32] {
        self.descriptors.withLock { held in
            defer { held = [] }
            return held
        }
    }

    deinit {
        closeDescriptors(self.take())
    }
}
