import SocketIPC
import Synchronization

// A small service the services tests call: the methods, as both sides declare them, and a router serving them.

enum Get: ServiceMethod {
    static let name = "kv.get"
    typealias Request = String
    typealias Response = String?
    static let isIdempotent = true
}

enum SetValue: ServiceMethod {
    static let name = "kv.set"
    struct Request: Codable, Sendable {
        var key: String
        var value: String
    }
    typealias Response = Bool
}

enum Count: ServiceMethod {
    static let name = "numbers.count"
    typealias Request = Int  // how many
    typealias Response = Int
}

enum Sum: ServiceMethod {
    static let name = "numbers.sum"
    typealias Request = Int
    typealias Response = Int
}

enum Echo: ServiceMethod {
    static let name = "numbers.echo"
    typealias Request = Int
    typealias Response = Int
}

enum Block: ServiceMethod {
    static let name = "test.block"
    typealias Request = String
    typealias Response = String
}

struct NotFoundDetails: Codable, Sendable, Equatable {
    var key: String
}

/// What the blocking handler saw, so that a test can await it.
final class HandlerProbe: Sendable {
    let started = AsyncStream<ContinuousClock.Instant?>.makeStream()
    let ended = AsyncStream<String>.makeStream()
}

/// The values the key-value handlers keep.
final class Store: Sendable {
    private let values = Mutex<[String: String]>([:])
    func withLock<Result>(_ body: (inout [String: String]) -> Result) -> Result { self.values.withLock { body(&$0) } }
}

func keyValueRouter(
    store: Store = Store(),
    probe: HandlerProbe = HandlerProbe(),
    codec: any MessageCodec = JSONCodec()
) -> ServiceRouter {
    var router = ServiceRouter(codec: codec)
    router.register(Get.self) { key, _ in
        if key == "missing" {
            throw ServiceError(code: "notFound", message: "no key \(key)", details: NotFoundDetails(key: key))
        }
        if key == "crash" { throw CrashError() }
        return store.withLock { $0[key] }
    }
    router.register(SetValue.self) { request, _ in
        store.withLock { $0[request.key] = request.value }
        return true
    }
    router.registerServerStreaming(Count.self) { count, writer, _ in
        for number in 0..<count { try await writer.write(number) }
    }
    router.registerClientStreaming(Sum.self) { numbers, _ in
        var sum = 0
        for try await number in numbers { sum += number }
        return sum
    }
    router.registerBidirectionalStreaming(Echo.self) { numbers, writer, _ in
        for try await number in numbers { try await writer.write(number * 10) }
    }
    router.register(Block.self) { request, context in
        probe.started.continuation.yield(context.deadline)
        do {
            // Until cancelled: by the caller, its deadline, or the connection's close.
            try await Task.sleep(for: .seconds(3600))
        } catch {
            probe.ended.continuation.yield(Task.isCancelled ? "cancelled" : "\(error)")
            throw error
        }
        return request
    }
    return router
}

struct CrashError: Error, CustomStringConvertible {
    var description: String { "the handler crashed on purpose" }
}
