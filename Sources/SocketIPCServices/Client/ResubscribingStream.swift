/// The elements of a server stream that a ``ServiceClient`` calls again after each reconnection (see
/// ``ServiceClient/resubscribing(_:_:options:)``), as an `AsyncSequence`.
///
/// Each call to the iterator's `next()` asks for one element, and only then is one read from the server: a consumer
/// that stops iterating holds the server back through the call's credit.
public struct ResubscribingStream<Element: Sendable>: AsyncSequence, Sendable {
    /// The stream's elements.
    public typealias Element = Element
    /// What the stream throws.
    public typealias Failure = any Error

    let elements: AsyncThrowingStream<Element, any Error>
    let demand: AsyncStream<Void>.Continuation

    /// Makes the iterator; iterate the stream once.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.elements.makeAsyncIterator(), demand: self.demand)
    }

    /// Asks for each element, then waits for it.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<Element, any Error>.AsyncIterator
        let demand: AsyncStream<Void>.Continuation

        /// The next element, or `nil` once the stream ended.
        public mutating func next() async throws -> Element? {
            self.demand.yield(())
            return try await self.base.next()
        }
    }
}
