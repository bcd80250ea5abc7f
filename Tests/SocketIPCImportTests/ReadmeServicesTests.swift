import Foundation
import SocketIPC
import Synchronization
import Testing

// The README's services examples, as written there, compiled with `import SocketIPC` alone and run.

enum Get: ServiceMethod {
    static let name = "kv.get"
    typealias Request = String      // the key
    typealias Response = String?    // its value
    static let isIdempotent = true  // safe to repeat on a new connection
}

enum Watch: ServiceMethod {          // server streaming: one request, a stream of responses
    static let name = "kv.watch"
    typealias Request = String
    typealias Response = String
}

enum Upload: ServiceMethod {         // client streaming: a stream of requests, one response
    static let name = "kv.upload"
    typealias Request = String
    typealias Response = Int
}

/// Not the README's: a bidirectional method, answering each request in capitals.
enum Shout: ServiceMethod {
    static let name = "test.shout"
    typealias Request = String
    typealias Response = String
}

/// What the README's handlers call `store`: values by key, and a stream of each key's values.
final class ReadmeStore: Sendable {
    private let values = Mutex<[String: String]>(["colour": "blue"])
    subscript(key: String) -> String? { self.values.withLock { $0[key] } }
    func changes(of key: String) -> AsyncStream<String> {
        let value = self[key] ?? ""
        return AsyncStream { continuation in
            continuation.yield(value)
            continuation.finish()
        }
    }
}

@Suite("README: services", .timeLimit(.minutes(2)))
struct ReadmeServicesTests {
    @Test("the first screen: a typed method, its daemon and a client that waits for it")
    func firstScreen() async throws {
        let directory = try ImportSocketIPCAloneTests.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/kv.sock"

        var router = ServiceRouter()
        router.register(Get.self) { key, context in
            context.logger.info("get \(key) for uid \(context.peer?.userID ?? 0)")  // SO_PEERCRED of the caller
            return key == "colour" ? "blue" : nil
        }
        let server = Server.service(configuration: .init(path: path), router: router)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }

            let client = ServiceClient(path: path)
            async let running: Void = client.run()
            let colour = try await client.call(Get.self, "colour")  // "blue"
            client.shutdown()
            try await running

            #expect(colour == "blue")
            server.shutdownGracefully()
            try await group.waitForAll()
        }
    }

    @Test("the Services section: streams both ways, errors as data, deadlines, a watch that survives restarts")
    func servicesSection() async throws {
        let directory = try ImportSocketIPCAloneTests.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/kv.sock"
        let store = ReadmeStore()

        var router = ServiceRouter()
        router.registerServerStreaming(Watch.self) { key, values, context in
            for await value in store.changes(of: key) { try await values.write(value) }  // waits while the client lags
        }
        router.registerClientStreaming(Upload.self) { lines, context in
            var count = 0
            for try await _ in lines { count += 1 }
            return count
        }
        router.register(Get.self) { key, context in
            guard let value = store[key] else {
                throw ServiceError(code: "notFound", message: "no key \(key)", details: ["key": key])
            }
            return value
        }

        let server = Server.service(configuration: .init(path: path), router: router)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            try await server.waitUntilRunning()
            let client = ServiceClient(path: path)
            group.addTask { try await client.run() }

            var caught = ""
            do {
                let value = try await client.call(Get.self, "size", options: CallOptions(timeout: .seconds(60)))
                caught = "value \(String(describing: value))"
            } catch let error as ServiceError where error.code == "notFound" {
                // the service's own error, with its Codable details: try error.details(as: [String: String].self)
                caught = try error.details(as: [String: String].self)?["key"] ?? "no details"
            } catch let error as SocketIPCError where error.code == .deadlineExceeded {
                caught = "deadline"
            } catch let error as SocketIPCError where error.isRetryable {
                caught = "retryable"
            }
            #expect(caught == "size")
            var watched: [String] = []
            for try await value in client.resubscribing(Watch.self, "colour") { watched.append(value) }  // survives restarts
            #expect(watched == ["blue"])
            let count = try await client.clientStreaming(Upload.self) { lines in
                for line in ["a", "b"] { try await lines.write(line) }
            }
            #expect(count == 2)

            client.shutdown()
            server.shutdownGracefully()
            try await group.waitForAll()
        }
    }

    @Test("from the main actor, as an app's code runs: the streaming calls take their body, which runs there")
    @MainActor
    func streamingFromTheMainActor() async throws {
        let directory = try ImportSocketIPCAloneTests.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/kv.sock"
        var router = ServiceRouter()
        router.registerServerStreaming(Watch.self) { key, changes, _ in
            try await changes.write(key)
        }
        router.registerClientStreaming(Upload.self) { lines, _ in
            var count = 0
            for try await _ in lines { count += 1 }
            return count
        }
        router.registerBidirectionalStreaming(Shout.self) { keys, values, _ in
            for try await key in keys { try await values.write(key.uppercased()) }
        }
        let server = Server.service(configuration: .init(path: path), router: router)
        let running = Task { try await server.run() }
        try await server.waitUntilRunning()
        // Before, these took a body that is not Sendable into a nonisolated method, which the main actor cannot
        // send ("sending value of non-Sendable type risks causing data races").
        var seen: [String] = []  // the main actor's own state, touched from the bodies
        let connection = try await Client.connect(to: path)
        try await connection.serverStreaming(Watch.self, "colour") { values in
            for try await value in values { seen.append(value) }
        }
        let count = try await connection.clientStreaming(Upload.self) { lines in
            for line in seen { try await lines.write(line) }
        }
        seen.append(try await connection.bidirectionalStreaming(Shout.self) { keys, values in
            try await keys.write("size")
            keys.finish()
            var all = ""
            for try await value in values { all += value }
            return all
        })
        connection.close()
        let client = ServiceClient(path: path)
        let clientRunning = Task { try await client.run() }
        try await client.serverStreaming(Watch.self, "shape") { values in
            for try await value in values { seen.append(value) }
        }
        client.shutdown()
        try await clientRunning.value
        #expect(seen == ["colour", "SIZE", "shape"])
        #expect(count == 1)
        server.shutdownGracefully()
        try await running.value
    }
}
