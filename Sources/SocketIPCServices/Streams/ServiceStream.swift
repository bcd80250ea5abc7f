import NIOCore
import SocketIPCCore

/// The messages of one direction of a call, decoded, as an `AsyncSequence`: a handler's requests (client and
/// bidirectional streaming), or a caller's responses (server and bidirectional streaming).
///
/// Iterate it once, from one task at a time: a second task that waits for a message while another does gets
/// `SocketIPCError` with code `invalidState`. It ends (`nil`) when the other side ends its direction normally, and
/// throws when the call fails:
/// the handler's error as a ``ServiceError`` or a `SocketIPCError` (`deadlineExceeded`, `connectionClosed`, …), or
/// `invalidMessage` for a message that does not decode; `invalidState` on a caller's stream kept past the body it
/// was handed to. Reading is what gives the sender credit (PROTOCOL.md, "Flow
/// control"): a consumer that stops reading stops the producer on the other side after 64 KiB, and no more than that
/// waits here.
public struct ServiceStream<Element: Decodable & Sendable>: AsyncSequence, Sendable {
    /// The decoded messages.
    public typealias Element = Element
    /// What the stream throws.
    public typealias Failure = any Error

    let call: CallStream
    let codec: any MessageCodec

    /// Makes the iterator.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(call: self.call, codec: self.codec)
    }

    /// Reads and decodes the messages one at a time.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let call: CallStream
        let codec: any MessageCodec
        var finished = false

        /// The next message, or `nil` once the other side has ended its direction; what `for try await` calls
        /// (SE-0421), on the caller's isolation. Without it the loop would call ``next()`` through the protocol's
        /// default, which hops to the generic executor and back for every message.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(any Error) -> Element? {
            try await self.next()
        }

        /// The next message, or `nil` once the other side has ended its direction.
        nonisolated(nonsending) public mutating func next() async throws -> Element? {
            guard !self.finished else { return nil }
            switch try await self.call.next() {
            case .message(let message, let descriptors):
                do {
                    return try DescriptorCoding.decodesAwayFromTheLoop(message, readOn: self.call.connection)
                        ? await DescriptorCoding.decodeAwayFromTheLoop(
                            Element.self,
                            from: message,
                            descriptors: descriptors,
                            codec: self.codec
                        )
                        : DescriptorCoding.decode(
                            Element.self,
                            from: message,
                            descriptors: descriptors,
                            codec: self.codec
                        )
                } catch {
                    self.finished = true
                    let failure = SocketIPCError(
                        .invalidMessage,
                        "a message of the call '\(self.call.method)' is not a \(Element.self): \(decodingErrorText(error))",
                        cause: error
                    )
                    if self.call.isCaller { self.call.cancel(.cancelled) } else { self.call.fail(failure) }
                    throw failure
                }
            case .end(let status):
                self.finished = true
                if let error = status.error(codec: self.codec, method: self.call.method) { throw error }
                return nil
            }
        }
    }
}

/// Writes the messages of one direction of a call, encoded: a caller's requests (client and bidirectional
/// streaming), or a handler's responses (server and bidirectional streaming).
///
/// ``write(_:)`` waits while the other side has not given credit for more (it is not reading), so a producer
/// never runs ahead of its consumer by more than 64 KiB. Write from one task at a time: a second task that would
/// wait for credit while another does gets `SocketIPCError` with code `invalidState`.
public struct ServiceStreamWriter<Element: Encodable & Sendable>: Sendable {
    let call: CallStream
    let codec: any MessageCodec

    /// Sends one message.
    /// - Throws: What the call failed with (the peer cancelled it or ended it, the deadline passed, the connection
    ///   closed); a message that does not encode: on a caller's writer `invalidMessage` (the codec's error as its
    ///   cause), on a handler's the codec's own error (it ends the call as the handler's error); `messageTooLarge`;
    ///   `invalidState` while another task waits to write; `CancellationError`.
    nonisolated(nonsending) public func write(_ element: Element) async throws {
        let (payload, descriptors) =
            self.call.isCaller
            ? try DescriptorCoding.encodeOutgoing(element, of: self.call.method, codec: self.codec, on: self.call.connection)
            : try DescriptorCoding.encode(element, codec: self.codec, on: self.call.connection)
        if descriptors.isEmpty {
            // A stream in full flow sends here without suspending and without a further async call.
            let attempt = try self.call.trySendWithoutWaiting(payload)
            if case .sent(longRun: false) = attempt {
                self.call.connection.recycleEncodingBuffer(payload)
                return
            }
            try await self.call.finishSend(payload, after: attempt)
        } else {
            let duplicates = try await DescriptorCoding.duplicate(descriptors, of: element, on: self.call.connection)
            try await self.call.send(payload, descriptors: duplicates)
        }
        self.call.connection.recycleEncodingBuffer(payload)
    }

    /// Sends every element of `elements`, in order.
    public func write<Elements: Sequence>(contentsOf elements: Elements) async throws where Elements.Element == Element {
        for element in elements { try await self.write(element) }
    }

    /// Ends the stream of requests (the caller's half-close): the handler's request stream ends, and a later
    /// ``write(_:)`` throws `invalidState`. For a bidirectional call whose handler answers once it has read every
    /// request, as a gRPC client's `CloseSend`: call it after the last write, then read the responses. Returning from
    /// the call's body does it too. Calling it again does nothing.
    ///
    /// On a handler's writer (its responses) it does nothing: a handler's stream ends when the handler returns, with
    /// its status.
    public func finish() {
        guard self.call.isCaller else { return }
        self.call.finish()
    }
}
