import CSocketIPCLinux
import Foundation
import SocketIPC
import SocketIPCTesting
import Synchronization
import SystemPackage
import SocketIPCTestSupport
import Testing

/// swift-system's descriptor (NIOCore has a protocol of the same name).
private typealias FileDescriptor = SystemPackage.FileDescriptor

/// Typed descriptors (`PassedDescriptor`) in the services layer: a unary response, a server stream's elements and a
/// client stream's requests carry open files and pipes; none is left open afterwards.
@Suite("Services: passing descriptors", .serialized, .timeLimit(.minutes(5)), .limitedConcurrency)
struct ServiceDescriptorTests {
    /// Opens a file for the caller: the response carries it.
    enum OpenFile: ServiceMethod {
        static let name = "fd.open"
        typealias Request = String
        struct Response: Codable, Sendable {
            var name: String
            var file: PassedDescriptor
        }
    }

    /// Streams `count` pipes' write ends, after writing "pipe N" into each.
    enum Pipes: ServiceMethod {
        static let name = "fd.pipes"
        typealias Request = Int
        struct Response: Codable, Sendable {
            var number: Int
            var readEnd: PassedDescriptor
        }
    }

    /// Reads each file the caller streams and returns their texts joined.
    enum ReadAll: ServiceMethod {
        static let name = "fd.readAll"
        struct Request: Codable, Sendable {
            var file: PassedDescriptor
        }
        typealias Response = String
    }

    /// Waits until cancelled: a call that stays open.
    enum Hold: ServiceMethod {
        static let name = "fd.hold"
        typealias Request = Int
        typealias Response = Int
    }

    static func router() -> ServiceRouter {
        var router = ServiceRouter()
        router.register(Hold.self) { request, _ in
            try await Task.sleep(for: .seconds(600))
            return request
        }
        router.register(OpenFile.self) { path, _ in
            let file = try FileDescriptor.open(path, .readOnly)
            defer { try? file.close() }  // the value holds a duplicate
            return OpenFile.Response(name: path, file: try PassedDescriptor(file))
        }
        router.registerServerStreaming(Pipes.self) { count, writer, _ in
            for number in 0..<count {
                let (readEnd, writeEnd) = try FileDescriptor.pipe()
                defer { try? readEnd.close() }
                _ = try writeEnd.writeAll("pipe \(number)".utf8)
                try writeEnd.close()
                try await writer.write(Pipes.Response(number: number, readEnd: try PassedDescriptor(readEnd)))
            }
        }
        router.registerClientStreaming(ReadAll.self) { requests, _ in
            var texts: [String] = []
            for try await request in requests {
                guard let file = request.file.take() else { throw SocketIPCError(.invalidMessage, "no file") }
                defer { try? file.close() }
                texts.append(try readAll(file))
            }
            return texts.joined(separator: "+")
        }
        return router
    }

    static var options: ConnectionOptions {
        var options = ConnectionOptions()
        options.maximumDescriptorsPerMessage = 2
        return options
    }

    func withServer(_ body: (String) async throws -> Void) async throws {
        try await withFramedTestServer(
            configure: { $0.connection = Self.options },
            makeHandler: { ServiceConnectionHandler(router: Self.router()) }
        ) { _, path in
            try await body(path)
        }
    }

    func withConnection(to path: String, _ body: (Connection) async throws -> Void) async throws {
        var configuration = ClientConfiguration()
        configuration.connection = Self.options
        try await Client.withConnection(to: path, configuration: configuration, body)
    }

    @Test("a unary response carries an open file the caller reads and owns")
    func unaryResponse() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/opened.txt"
        try "opened by the server".write(toFile: path, atomically: true, encoding: .utf8)
        try await self.withServer { socket in
            try await self.withConnection(to: socket) { connection in
                let response = try await connection.call(OpenFile.self, path)
                #expect(response.name == path)
                let file = try #require(response.file.take())
                defer { try? file.close() }
                #expect(try readAll(file) == "opened by the server")
                #expect(response.file.take() == nil, "taken once")
            }
        }
        #expect(await openCopiesOnceClosed(of: path) == 0, "no copy of the file is left open")
    }

    @Test("each element of a server stream carries a pipe; elements not taken are closed")
    func serverStream() async throws {
        let pipes = Mutex<[String]>([])
        try await self.withServer { socket in
            try await self.withConnection(to: socket) { connection in
                try await connection.serverStreaming(Pipes.self, 5) { responses in
                    for try await response in responses {
                        pipes.withLock { $0.append(linkTarget(response.readEnd.descriptor!)) }
                        // Every other one is read; the rest are dropped with their value, which closes them.
                        guard response.number % 2 == 0, let readEnd = response.readEnd.take() else { continue }
                        defer { try? readEnd.close() }
                        #expect(try readAll(readEnd) == "pipe \(response.number)")
                    }
                }
            }
        }
        // The server has stopped and the connection is closed: the copies the relays sent are closed too.
        let seen = pipes.withLock { $0 }
        #expect(seen.count == 5)
        for pipe in seen { #expect(await openCopiesOnceClosed(of: pipe) == 0, "\(pipe) is closed") }
    }

    @Test("a client stream's requests carry files; the handler reads them all")
    func clientStream() async throws {
        let targets = Mutex<[String]>([])
        try await self.withServer { socket in
            try await self.withConnection(to: socket) { connection in
                let joined = try await connection.clientStreaming(ReadAll.self) { writer in
                    for number in 0..<3 {
                        let (readEnd, writeEnd) = try FileDescriptor.pipe()
                        defer { try? readEnd.close() }
                        _ = try writeEnd.writeAll("file \(number)".utf8)
                        try writeEnd.close()
                        targets.withLock { $0.append(linkTarget(readEnd)) }
                        try await writer.write(ReadAll.Request(file: try PassedDescriptor(readEnd)))
                    }
                }
                #expect(joined == "file 0+file 1+file 2")
            }
        }
        for target in targets.withLock({ $0 }) { #expect(await openCopiesOnceClosed(of: target) == 0) }
    }

    @Test("a PassedDescriptor on a connection that passes none fails the call with a clear error")
    func connectionWithout() async throws {
        try await withFramedTestServer(makeHandler: { ServiceConnectionHandler(router: Self.router()) }) { _, socket in
            try await Client.withConnection(to: socket) { connection in
                let error = await #expect(throws: (any Error).self) {
                    _ = try await connection.call(OpenFile.self, "/dev/null")
                }
                #expect("\(error.map { "\($0)" } ?? "")".contains("maximumDescriptorsPerMessage"))
                // The connection stays usable: a call whose messages carry no descriptor works.
                let count = try await connection.serverStreaming(Pipes.self, 0) { responses in
                    try await responses.reduce(0) { count, _ in count + 1 }
                }
                #expect(count == 0)
            }
        }
    }
}

extension ServiceDescriptorTests {
    @Test("descriptors a peer sends on a call after its end are closed at once, not kept with the call")
    func afterTheEnd() async throws {
        let pipeName = try await withFramedTestServer(
            configure: { $0.connection = Self.options },
            makeHandler: { ServiceConnectionHandler(router: Self.router()) }
        ) { _, path in
            let socket = try await RawSocket.connect(to: path)
            defer { socket.close() }
            try await socket.write([0x53, 0x49, 0x50, 0x43, 0x01, 0x03, 0x00, 0x00])
            // The server's hello first: it admits the peer's descriptors only then (SO_PASSRIGHTS).
            #expect(try await socket.read(exactly: 8).count == 8)
            try await socket.write(
                callOpenBytes(id: 1, method: Hold.name) + frameBytes(kind: 0x07, id: 1, payload: Array("1".utf8))
                    + callEndOKBytes(id: 1)
            )
            let (readEnd, writeEnd) = try FileDescriptor.pipe()
            defer {
                try? readEnd.close()
                try? writeEnd.close()
            }
            let pipe = linkTarget(readEnd)
            // 300 empty call messages after the end, each with both ends of the pipe: far more than a call may hold.
            let frames: [UInt8] = [0, 0, 0, 2, 0x0D, 2] + frameBytes(kind: 0x07, id: 1, payload: [])
            for _ in 0..<300 {
                let sent = [readEnd.rawValue, writeEnd.rawValue].withUnsafeBufferPointer { descriptors in
                    frames.withUnsafeBytes {
                        csocketipc_send_with_descriptors(
                            socket.descriptor, $0.baseAddress, UInt($0.count), descriptors.baseAddress, 2
                        )
                    }
                }
                #expect(sent == frames.count)
            }
            // A ping answered means every frame before it was handled.
            try await socket.write(frameBytes(kind: 0x0B, id: 7, payload: []))
            let pong = frameBytes(kind: 0x0C, id: 7, payload: [])
            var received: [UInt8] = []
            let deadline = ContinuousClock.now + .seconds(20)
            while !received.contains(pong) && ContinuousClock.now < deadline {
                let (bytes, closed) = try await socket.readAvailable(for: .milliseconds(100))
                received += bytes
                if closed { break }
            }
            #expect(received.contains(pong), "the connection answered the ping")
            #expect(openCopies(of: pipe) == 2, "only the test's own two ends are open while the call is")
            return pipe
        }
        #expect(await openCopiesOnceClosed(of: pipeName) == 0)
    }
}

extension Array where Element == UInt8 {
    /// Whether `part` occurs in this array.
    fileprivate func contains(_ part: [UInt8]) -> Bool {
        guard part.count <= self.count else { return false }
        return (0...(self.count - part.count)).contains { Array(self[$0..<($0 + part.count)]) == part }
    }
}



