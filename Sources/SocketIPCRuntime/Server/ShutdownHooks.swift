/// The bodies registered with ``Server/onGracefulShutdown(_:)``: kept until the server's shutdown begins, then run one
/// after the other, in the order they were registered, each once. Kept beside the server's state machine, under the
/// same lock, so that a body registered while the others run is never lost between them and the end.
struct ShutdownHooks {
    /// A body to run when the shutdown begins.
    typealias Body = @Sendable () async -> Void

    private enum State {
        /// The shutdown has not begun: the bodies wait.
        case waiting([Body])
        /// The bodies run: these are the ones still to run, in order.
        case running([Body])
        /// Every body ran (or there were none when the shutdown began).
        case finished
    }

    /// What to do with a body just registered.
    enum AddAction {
        /// Nothing: it is kept, and runs when the shutdown begins or after the bodies running now.
        case kept
        /// Run it now, in a task of its own: the shutdown's bodies have all run already.
        case runAtOnce
    }

    private var state = State.waiting([])

    /// Registers `body`.
    mutating func add(_ body: @escaping Body) -> AddAction {
        switch self.state {
        case .waiting(var bodies):
            self.state = .finished  // not read: keeps `bodies` unshared while it grows
            bodies.append(body)
            self.state = .waiting(bodies)
            return .kept
        case .running(var bodies):
            self.state = .finished  // not read: keeps `bodies` unshared while it grows
            bodies.append(body)
            self.state = .running(bodies)
            return .kept
        case .finished:
            return .runAtOnce
        }
    }

    /// The shutdown began. Returns whether there are bodies to run, which ``next()`` then hands out; `false` the
    /// second time.
    mutating func begin() -> Bool {
        guard case .waiting(let bodies) = self.state else { return false }
        self.state = bodies.isEmpty ? .finished : .running(bodies)
        return !bodies.isEmpty
    }

    /// The next body to run; `nil` once every body has run, which ends the run: a body registered after that runs at
    /// once.
    mutating func next() -> Body? {
        guard case .running(var bodies) = self.state else { return nil }
        guard !bodies.isEmpty else {
            self.state = .finished
            return nil
        }
        self.state = .finished  // not read: keeps `bodies` unshared
        let body = bodies.removeFirst()
        self.state = .running(bodies)
        return body
    }
}
