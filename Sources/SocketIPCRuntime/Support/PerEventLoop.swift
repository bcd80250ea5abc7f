import NIOCore
import Synchronization

/// One instance of `Value` per event loop, made on first use and kept for the life of the process (SocketIPC uses
/// the process-wide `MultiThreadedEventLoopGroup.singleton`, whose loops never go away).
final class PerEventLoop<Value: AnyObject & Sendable>: Sendable {
    private let values = Mutex<[ObjectIdentifier: Value]>([:])
    private let make: @Sendable (any EventLoop) -> Value

    init(_ make: @escaping @Sendable (any EventLoop) -> Value) {
        self.make = make
    }

    /// The instance of `eventLoop`.
    func callAsFunction(_ eventLoop: any EventLoop) -> Value {
        self.values.withLock { values in
            if let value = values[ObjectIdentifier(eventLoop)] { return value }
            let value = self.make(eventLoop)
            values[ObjectIdentifier(eventLoop)] = value
            return value
        }
    }
}
