#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SocketIPC
import SocketIPCTesting
import Synchronization
import SocketIPCTestSupport
import Testing

@Suite("Services: typed calls", .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceCallTests {
    @Test("a unary call returns the handler's typed response; calls share a connection")
    func unary() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            #expect(try await connection.call(SetValue.self, .init(key: "colour", value: "blue")))
            #expect(try await connection.call(Get.self, "colour") == "blue")
            #expect(try await connection.call(Get.self, "size") == nil)
            // Many at once on one connection.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        let stored = try await connection.call(SetValue.self, .init(key: "k\(index)", value: "\(index)"))
                        let value = try await connection.call(Get.self, "k\(index)")
                        #expect(stored)
                        #expect(value == "\(index)")
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test("an application error arrives as a ServiceError with its code, text and details")
    func applicationError() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: ServiceError.self) { try await connection.call(Get.self, "missing") }
            #expect(error.code == "notFound")
            #expect(error.message == "no key missing")
            #expect(try error.details(as: NotFoundDetails.self) == NotFoundDetails(key: "missing"))
            // Another error type is a remote error with its description; the connection stays usable.
            let crash = try await #require(throws: SocketIPCError.self) { try await connection.call(Get.self, "crash") }
            #expect(crash.code == .remoteError)
            #expect(crash.message.contains("crashed on purpose"))
            #expect(try await connection.call(Get.self, "x") == nil)
        }
    }

    @Test("an unknown method is a typed error, not a hang, on a service server and on a plain framed server")
    func unknownMethod() async throws {
        enum Nope: ServiceMethod {
            static let name = "no.such"
            typealias Request = Int
            typealias Response = Int
        }
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: SocketIPCError.self) { try await connection.call(Nope.self, 1) }
            #expect(error.code == .unknownMethod)
        }
        try await withFramedTestServer(makeHandler: { EchoRequests() }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: SocketIPCError.self) { try await connection.call(Nope.self, 1) }
            #expect(error.code == .unknownMethod)
            // Raw requests still work beside calls.
            #expect(String(buffer: try await connection.request(ByteBuffer(string: "hi"))) == "hi")
        }
    }

    @Test("a request of the wrong type is refused with invalidMessage")
    func wrongType() async throws {
        enum GetAsNumber: ServiceMethod {
            static let name = "kv.get"
            typealias Request = Int
            typealias Response = String?
        }
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let error = try await #require(throws: SocketIPCError.self) { try await connection.call(GetAsNumber.self, 7) }
            #expect(error.code == .invalidMessage)
        }
    }

    @Test("an untyped call by name, with encoded JSON both ways, as a command-line tool makes it")
    func untyped() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: keyValueRouter()) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let stored = try await connection.call(method: "kv.set", request: ByteBuffer(string: #"{"key":"a","value":"1"}"#))
            #expect(String(buffer: stored) == "true")
            let value = try await connection.call(method: "kv.get", request: ByteBuffer(string: #""a""#))
            #expect(String(buffer: value) == #""1""#)
            var numbers: [String] = []
            try await connection.serverStreaming(method: "numbers.count", request: ByteBuffer(string: "3")) {
                numbers.append(String(buffer: $0))
            }
            #expect(numbers == ["0", "1", "2"])
            let error = try await #require(throws: ServiceError.self) {
                try await connection.call(method: "kv.get", request: ByteBuffer(string: #""missing""#))
            }
            #expect(error.code == "notFound")
            #expect(error.encodedDetails.map { String(buffer: $0) } == #"{"key":"missing"}"#)
        }
    }

    @Test("the handler sees the caller's credentials and connection")
    func credentials() async throws {
        enum WhoAmI: ServiceMethod {
            static let name = "whoami"
            typealias Request = Int
            typealias Response = [UInt32]
        }
        var router = ServiceRouter()
        router.register(WhoAmI.self) { _, context in
            [context.peer?.userID ?? 99999, UInt32(context.peer?.processID ?? 0), context.connection.isOpen ? 1 : 0]
        }
        try await withFramedTestServer(makeHandler: { [router] in ServiceConnectionHandler(router: router) }) { _, path in
            let connection = try await Client.connect(to: path)
            defer { connection.close() }
            let answer = try await connection.call(WhoAmI.self, 0)
            #expect(answer == [getuid(), UInt32(getpid()), 1])
        }
    }
}

/// Answers raw requests with their payload; serves no methods.
struct EchoRequests: ConnectionHandler, Sendable {
    func didReceiveRequest(_ request: ByteBuffer, reply: Reply, on connection: Connection) {
        reply.succeed(request)
    }
}
