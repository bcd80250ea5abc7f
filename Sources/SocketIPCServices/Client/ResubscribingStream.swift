import SocketIPCCore
import Synchronization

/// The elements of a server stream that a ``ServiceClient`` calls again after each reconnection (see
/// ``ServiceClient/resubscribing(_:_:options:)``), as an `AsyncSequence`.
///
/// Each call to the iterator's `next()` asks for one element, and only then is one read from the server: a consumer
/// that stops iterating holds the server back through the call's credit.
///
/// Iterate it from one task at a time: a task that asks for the next element while another waits for one gets
/// `SocketIPCError` with code `invalidState`, as a ``ServiceStream`` does (found by a review: it crashed the process).
public struct ResubscribingStream<Element: Sendable>: AsyncSequence, Sendable {
    /// The stream's elements.
    public typealias Element = Element
    /// What the stream throws.
    public typealias Failure = any Error

    let elements: AsyncThrowingStream<Element, any Error>
    let demand: AsyncStream<Void>.Continuation
    /// Whether a task waits for an element, shared by every copy of the stream and its iterators.
    let reading = ReaderFlag()

    init(elements: AsyncThrowingStream<Element, any Error>, demand: AsyncStream<Void>.Continuation) {
        self.elements = elements
        self.demand = demand
    }

    /// Makes the iterator; iterate the stream once.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.elements.makeAsyncIterator(), demand: self.demand, reading: self.reading)
    }

    /// Asks for each element, then waits for it.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<Element, any Error>.AsyncIterator
        let demand: AsyncStream<Void>.Continuation
        let reading: ReaderFlag

        /// The next element, or `nil` once the stream ended.
        /// - Throws: What the calls threw (see ``ServiceClient/resubscribing(_:_:options:)``); `SocketIPCError` with
        ///   code `invalidState` while another task waits for an element.
        public mutating func next() async throws -> Element? {
            guard self.reading.begin() else {
                throw SocketIPCError(
                    .invalidState,
                    "another task is already waiting for the next element of this resubscribing stream; iterate it from one task at a time"
                )
            }
            defer { self.reading.end() }
            self.demand.yield(())
            return try await self.base.next()
        }
    }
}

/// Whether a task is reading a stream, so that a second one is refused instead of trapping in `AsyncThrowingStream`.
final class ReaderFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    /// Marks a read begun; `false` if one is already under way.
    func begin() -> Bool {
        self.flag.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    /// Marks the read ended.
    func end() {
        self.flag.store(false, ordering: .releasing)
    }
}
