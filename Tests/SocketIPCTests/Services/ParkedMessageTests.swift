import Foundation
import NIOCore
import SocketIPC
import SocketIPCTestSupport
import SocketIPCTesting
import Synchronization
import SystemPackage
import Testing

@testable import SocketIPCRuntime
@testable import SocketIPCServices

private typealias FD = SystemPackage.FileDescriptor

/// Messages parked for credit (strict credit, PROTOCOL.md "Flow control"): with descriptors and shared payloads, under
/// cancellation and deadlines, many large calls at once on one connection, and as a raw strict peer reads them (each
/// within its credit, each call-blocked frame the next message's cost). Written by a review; all held.
@Suite("Parked messages", .timeLimit(.minutes(1)))
struct ParkedMessageTests {
    static let mib = 1 << 20

    /// A 1 MiB string that says which message it is.
    static func big(_ tag: String, size: Int = 1 << 20) -> String {
        let head = "<\(tag)>"
        return head + String(repeating: "b", count: size - head.utf8.count)
    }

    static func tag(of text: String) -> String {
        guard text.hasPrefix("<"), let end = text.firstIndex(of: ">") else { return "?" }
        return String(text[text.index(after: text.startIndex)..<end])
    }

    enum FileBlob: ServiceMethod {
        static let name = "parked.fileBlob"
        struct Request: Codable, Sendable {
            var blob: String
            var file: PassedDescriptor
        }
        typealias Response = Request
    }

    enum FileUpload: ServiceMethod {
        static let name = "parked.fileUpload"
        typealias Request = FileBlob.Request
        typealias Response = String
    }

    enum FileDownload: ServiceMethod {
        static let name = "parked.fileDownload"
        typealias Request = Int
        typealias Response = FileBlob.Request
    }

    enum FileExchange: ServiceMethod {
        static let name = "parked.fileExchange"
        typealias Request = FileBlob.Request
        typealias Response = FileBlob.Request
    }

    enum Echo: ServiceMethod {
        static let name = "parked.echo"
        static let isIdempotent = true
        typealias Request = String
        typealias Response = String
    }

    enum Upload: ServiceMethod {
        static let name = "parked.upload"
        typealias Request = String
        typealias Response = [String]
    }

    enum Download: ServiceMethod {
        static let name = "parked.download"
        typealias Request = Int
        typealias Response = String
    }

    enum Exchange: ServiceMethod {
        static let name = "parked.exchange"
        typealias Request = String
        typealias Response = String
    }

    /// Reads nothing until the gate opens.
    enum Idle: ServiceMethod {
        static let name = "parked.idle"
        typealias Request = String
        typealias Response = Int
    }

    /// Writes a large message, then waits for the gate.
    enum ParkThenWait: ServiceMethod {
        static let name = "parked.parkThenWait"
        typealias Request = Int
        typealias Response = String
    }

    static func pipe(with text: String) throws -> PassedDescriptor {
        let (readEnd, writeEnd) = try FD.pipe()
        defer { try? readEnd.close() }
        _ = try writeEnd.writeAll(text.utf8)
        try writeEnd.close()
        return try PassedDescriptor(readEnd)
    }

    static func read(_ passed: PassedDescriptor) throws -> String {
        guard let file = passed.take() else { throw SocketIPCError(.invalidMessage, "no file") }
        defer { try? file.close() }
        return try readAll(file)
    }

    static func router(gate: OneShotSignal, onEventLoop: Bool = true) -> ServiceRouter {
        var router = ServiceRouter()
        router.runsHandlersOnEventLoop = onEventLoop
        router.register(FileBlob.self) { request, _ in
            let text = try Self.read(request.file)
            return FileBlob.Request(blob: request.blob, file: try Self.pipe(with: "re:" + text))
        }
        router.registerClientStreaming(FileUpload.self) { requests, _ in
            var texts: [String] = []
            for try await request in requests {
                texts.append(Self.tag(of: request.blob) + "=" + (try Self.read(request.file)))
            }
            return texts.joined(separator: ",")
        }
        router.registerServerStreaming(FileDownload.self) { count, writer, _ in
            for index in 0..<count {
                try await writer.write(FileBlob.Request(blob: Self.big("d\(index)"), file: try Self.pipe(with: "p\(index)")))
            }
        }
        router.registerBidirectionalStreaming(FileExchange.self) { requests, writer, _ in
            // Writes its large message before reading.
            try await writer.write(FileBlob.Request(blob: Self.big("s0"), file: try Self.pipe(with: "server")))
            for try await request in requests {
                let text = try Self.read(request.file)
                try await writer.write(FileBlob.Request(blob: request.blob, file: try Self.pipe(with: "re:" + text)))
            }
        }
        router.register(Echo.self) { request, _ in request }
        router.registerClientStreaming(Upload.self) { chunks, _ in
            var tags: [String] = []
            for try await chunk in chunks { tags.append(Self.tag(of: chunk) + ":\(chunk.utf8.count)") }
            return tags
        }
        router.registerServerStreaming(Download.self) { count, writer, _ in
            for index in 0..<count { try await writer.write(Self.big("d\(index)")) }
        }
        router.registerBidirectionalStreaming(Exchange.self) { requests, writer, _ in
            try await writer.write(Self.big("first"))
            for try await request in requests { try await writer.write(Self.big("re-" + Self.tag(of: request))) }
        }
        router.registerClientStreaming(Idle.self) { chunks, _ in
            await gate.waitUntilFired()
            var total = 0
            for try await chunk in chunks { total += chunk.utf8.count }
            return total
        }
        router.registerServerStreaming(ParkThenWait.self) { _, writer, _ in
            try await writer.write(Self.big("parked"))
            await gate.waitUntilFired()
            try Task.checkCancellation()
        }
        return router
    }

    static func options(descriptors: Bool) -> ConnectionOptions {
        var options = ConnectionOptions()
        if descriptors { options.maximumDescriptorsPerMessage = 2 }
        return options
    }

    static func connect(_ path: String, descriptors: Bool = true) async throws -> Connection {
        var configuration = ClientConfiguration()
        configuration.connection = Self.options(descriptors: descriptors)
        return try await Client.connect(to: path, configuration: configuration)
    }

    /// Waits (yielding, bounded by the suite's time limit) until `condition` holds.
    static func until(_ condition: () -> Bool) async {
        while !condition() { await Task.yield() }
    }

    // MARK: - 1. Descriptors

    @Test("parked messages that carry descriptors: unary, client stream, server stream, bidi; each descriptor arrives once", arguments: [true, false])
    func parkedDescriptors(onEventLoop: Bool) async throws {
        let gate = OneShotSignal()
        try await withServiceTestServer(
            router: Self.router(gate: gate, onEventLoop: onEventLoop),
            configure: { $0.connection = Self.options(descriptors: true) }
        ) { _, path in
            let connection = try await Self.connect(path)
            defer { connection.close() }
            #expect(connection.peerSendsWithinCredit)
            let unary = try await connection.call(
                FileBlob.self, FileBlob.Request(blob: Self.big("u"), file: try Self.pipe(with: "hello"))
            )
            #expect(Self.tag(of: unary.blob) == "u" && unary.blob.utf8.count == Self.mib)
            #expect(try Self.read(unary.file) == "re:hello")

            let uploaded = try await connection.clientStreaming(FileUpload.self) { writer in
                for index in 0..<3 {
                    try await writer.write(FileBlob.Request(blob: Self.big("c\(index)"), file: try Self.pipe(with: "f\(index)")))
                }
            }
            #expect(uploaded == "c0=f0,c1=f1,c2=f2")

            let downloaded = try await connection.serverStreaming(FileDownload.self, 3) { responses in
                var seen: [String] = []
                for try await response in responses {
                    seen.append(Self.tag(of: response.blob) + "=" + (try Self.read(response.file)))
                }
                return seen
            }
            #expect(downloaded == ["d0=p0", "d1=p1", "d2=p2"])

            let exchanged = try await connection.bidirectionalStreaming(FileExchange.self) { writer, responses in
                // Both sides write a large message with a pipe before either reads.
                try await writer.write(FileBlob.Request(blob: Self.big("x0"), file: try Self.pipe(with: "client")))
                var seen: [String] = []
                var iterator = responses.makeAsyncIterator()
                if let first = try await iterator.next() { seen.append(Self.tag(of: first.blob) + "=" + (try Self.read(first.file))) }
                if let second = try await iterator.next() { seen.append(Self.tag(of: second.blob) + "=" + (try Self.read(second.file))) }
                return seen
            }
            #expect(exchanged == ["s0=server", "x0=re:client"])
        }
    }

    @Test("shared payloads (memfd, >= 256 KiB) parked both ways: all arrive intact")
    func parkedSharedPayloads() async throws {
        let gate = OneShotSignal()
        try await withServiceTestServer(
            router: Self.router(gate: gate),
            configure: { $0.connection = Self.options(descriptors: true) }
        ) { _, path in
            let connection = try await Self.connect(path)
            defer { connection.close() }
            for index in 0..<3 {
                let echoed = try await connection.call(Echo.self, Self.big("e\(index)", size: 3 * Self.mib))
                #expect(Self.tag(of: echoed) == "e\(index)" && echoed.utf8.count == 3 * Self.mib)
            }
            let uploaded = try await connection.clientStreaming(Upload.self) { writer in
                for index in 0..<4 { try await writer.write(Self.big("c\(index)")) }
            }
            #expect(uploaded == (0..<4).map { "c\($0):\(Self.mib)" })
            let downloaded = try await connection.serverStreaming(Download.self, 4) { responses in
                try await responses.reduce(into: [String]()) { $0.append(Self.tag(of: $1)) }
            }
            #expect(downloaded == ["d0", "d1", "d2", "d3"])
            let exchanged = try await connection.bidirectionalStreaming(Exchange.self) { writer, responses in
                try await writer.write(Self.big("q0"))
                var iterator = responses.makeAsyncIterator()
                var seen: [String] = []
                if let first = try await iterator.next() { seen.append(Self.tag(of: first)) }
                try await writer.write(Self.big("q1"))
                if let next = try await iterator.next() { seen.append(Self.tag(of: next)) }
                if let next = try await iterator.next() { seen.append(Self.tag(of: next)) }
                return seen
            }
            #expect(exchanged == ["first", "re-q0", "re-q1"])
        }
    }

    // MARK: - 2. Cancellation and deadlines while parked

    @Test("a parked message with a pipe on a handler that reads nothing: the caller cancels; the pipe's duplicate is closed")
    func cancelParkedPipe() async throws {
        let gate = OneShotSignal()
        try await withServiceTestServer(
            router: Self.router(gate: gate),
            configure: { $0.connection = Self.options(descriptors: true) }
        ) { _, path in
            let connection = try await Self.connect(path)
            defer { connection.close() }
            enum IdleFiles: ServiceMethod {
                static let name = "parked.idle"  // the Idle handler reads nothing until the gate opens
                typealias Request = FileBlob.Request
                typealias Response = Int
            }
            let (readEnd, writeEnd) = try FD.pipe()
            try writeEnd.close()  // (both ends name the same pipe in /proc/self/fd)
            defer { try? readEnd.close() }
            let target = linkTarget(readEnd)
            let (parked, parkedContinuation) = AsyncStream<Void>.makeStream()
            let idle = Task {
                try await connection.clientStreaming(IdleFiles.self) { writer in
                    try await writer.write(FileBlob.Request(blob: Self.big("idle"), file: try PassedDescriptor(readEnd)))
                    parkedContinuation.yield()
                }
            }
            for await _ in parked { break }
            // The duplicate is held with the parked message.
            #expect(openCopies(of: target) == 2)
            idle.cancel()
            let result = await idle.result
            #expect(throws: CancellationError.self) { try result.get() }
            let multiplexer = CallMultiplexer.of(connection)
            await Self.until { multiplexer.count == 0 }
            let clock = ContinuousClock()
            let limit = clock.now.advanced(by: .seconds(3))
            while openCopies(of: target) > 1 && clock.now < limit { await Task.yield() }
            #expect(openCopies(of: target) == 1, "the parked duplicate is closed")
            #expect(try await connection.call(Echo.self, "after") == "after")
        }
    }

    @Test("the caller's timeout passes while its request is parked: deadlineExceeded, the handler's call unregistered, the connection serves on")
    func callerDeadlineWhileParked() async throws {
        let gate = OneShotSignal()
        let served = Mutex<Connection?>(nil)
        var router = Self.router(gate: gate)
        router.register(Get.self) { key, context in
            served.withLock { $0 = context.connection }
            return key
        }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Self.connect(path, descriptors: false)
            defer { connection.close() }
            #expect(try await connection.call(Get.self, "k") == "k")
            let serverSide = try #require(served.withLock { $0 })
            let error = await #expect(throws: SocketIPCError.self) {
                try await connection.clientStreaming(Idle.self, options: CallOptions(timeout: .milliseconds(300))) { writer in
                    try await writer.write(Self.big("late"))
                }
            }
            #expect(error?.code == .deadlineExceeded, "\(String(describing: error))")
            await Self.until { CallMultiplexer.of(serverSide).count == 0 }
            #expect(try await connection.call(Echo.self, Self.big("after")).utf8.count == Self.mib)
        }
    }

    @Test("the handler's message is parked and then its deadline passes while it waits: the caller gets deadlineExceeded, not a hang")
    func handlerDeadlineWhileParked() async throws {
        let gate = OneShotSignal()
        try await withServiceTestServer(router: Self.router(gate: gate)) { _, path in
            let connection = try await Self.connect(path, descriptors: false)
            defer { connection.close() }
            let error = await #expect(throws: SocketIPCError.self) {
                try await connection.serverStreaming(ParkThenWait.self, 1, options: CallOptions(timeout: .milliseconds(400))) {
                    responses in
                    try await responses.reduce(into: [String]()) { $0.append(Self.tag(of: $1)) }
                }
            }
            // The caller reads: the parked message arrives; then the deadline.
            #expect(error?.code == .deadlineExceeded, "\(String(describing: error))")
            #expect(try await connection.call(Echo.self, "after") == "after")
        }
    }

    @Test("a finished handler's last message parked, the caller reads nothing until its deadline: deadlineExceeded; the server's call unregistered")
    func finishedHandlerParkedPastDeadline() async throws {
        let served = Mutex<Connection?>(nil)
        var router = ServiceRouter()
        router.registerServerStreaming(Download.self) { count, writer, context in
            served.withLock { $0 = context.connection }
            try await writer.write("first")
            try await writer.write(Self.big("last"))
        }
        router.register(Echo.self) { request, _ in request }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Self.connect(path, descriptors: false)
            defer { connection.close() }
            let error = await #expect(throws: SocketIPCError.self) {
                // 10 s: the handler must have run and written its first message by then (in a full run once it had
                // not within 3 s, and the call ended before the test could look at the server's side).
                try await connection.serverStreaming(Download.self, 1, options: CallOptions(timeout: .seconds(10))) {
                    responses in
                    var iterator = responses.makeAsyncIterator()
                    _ = try await iterator.next()
                    // Wait (without reading) until the caller's deadline has failed the call.
                    let serverSide = try #require(served.withLock { $0 })
                    // (Or stopped: under load the deadline may pass first.)
                    await Self.until { CallMultiplexer.of(serverSide).lookUp(1).map { $0.stopReason != nil } ?? true }
                    let call = try #require(CallMultiplexer.of(connection).lookUp(1))
                    await Self.until { call.failure != nil }
                    while try await iterator.next() != nil {}
                }
            }
            #expect(error?.code == .deadlineExceeded, "\(String(describing: error))")
            let serverSide = try #require(served.withLock { $0 })
            await Self.until { CallMultiplexer.of(serverSide).count == 0 }
            #expect(try await connection.call(Echo.self, "after") == "after")
        }
    }

    @Test("the caller's server stream body returns while the handler's large message is parked: the handler's call ends, none left registered")
    func callerLeavesWhileHandlerParked() async throws {
        let served = Mutex<Connection?>(nil)
        var router = ServiceRouter()
        router.registerServerStreaming(Download.self) { count, writer, context in
            served.withLock { $0 = context.connection }
            for index in 0..<count { try await writer.write(Self.big("d\(index)")) }
        }
        router.register(Echo.self) { request, _ in request }
        try await withServiceTestServer(router: router) { _, path in
            let connection = try await Self.connect(path, descriptors: false)
            defer { connection.close() }
            for _ in 0..<5 {
                let first = try await connection.serverStreaming(Download.self, 3) { responses in
                    for try await response in responses { return Self.tag(of: response) }
                    return ""
                }
                #expect(first == "d0")
            }
            let serverSide = try #require(served.withLock { $0 })
            await Self.until { CallMultiplexer.of(serverSide).count == 0 }
            #expect(try await connection.call(Echo.self, "after") == "after")
        }
    }

    @Test("50 unary calls of 1 MiB each way, client streams and bidi streams on one connection: all complete, in order", arguments: [true, false])
    func manyConcurrentLargeCalls(onEventLoop: Bool) async throws {
        let gate = OneShotSignal()
        try await withServiceTestServer(router: Self.router(gate: gate, onEventLoop: onEventLoop)) { _, path in
            let connection = try await Self.connect(path, descriptors: false)
            defer { connection.close() }
            try await withThrowingTaskGroup(of: String?.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        let echoed = try await connection.call(Echo.self, Self.big("u\(index)"))
                        return Self.tag(of: echoed) == "u\(index)" && echoed.utf8.count == Self.mib ? nil : "unary \(index)"
                    }
                }
                for index in 0..<8 {
                    group.addTask {
                        let tags = try await connection.clientStreaming(Upload.self) { writer in
                            for part in 0..<3 { try await writer.write(Self.big("c\(index).\(part)")) }
                        }
                        let expected = (0..<3).map { "c\(index).\($0):\(Self.mib)" }
                        return tags == expected ? nil : "client stream \(index): \(tags)"
                    }
                }
                for index in 0..<8 {
                    group.addTask {
                        let tags = try await connection.bidirectionalStreaming(Exchange.self) { writer, responses in
                            // Both write large before reading.
                            try await writer.write(Self.big("b\(index).0"))
                            var iterator = responses.makeAsyncIterator()
                            var seen: [String] = []
                            if let next = try await iterator.next() { seen.append(Self.tag(of: next)) }
                            try await writer.write(Self.big("b\(index).1"))
                            for _ in 0..<2 { if let next = try await iterator.next() { seen.append(Self.tag(of: next)) } }
                            return seen
                        }
                        let expected = ["first", "re-b\(index).0", "re-b\(index).1"]
                        return tags == expected ? nil : "bidi \(index): \(tags)"
                    }
                }
                for index in 0..<8 {
                    group.addTask {
                        let tags = try await connection.serverStreaming(Download.self, 3) { responses in
                            try await responses.reduce(into: [String]()) { $0.append(Self.tag(of: $1)) }
                        }
                        return tags == ["d0", "d1", "d2"] ? nil : "server stream \(index): \(tags)"
                    }
                }
                var problems: [String] = []
                for try await problem in group { if let problem { problems.append(problem) } }
                #expect(problems.isEmpty, "\(problems)")
            }
        }
    }
}

extension ParkedMessageTests {
    @Test("a raw strict reader of 5 concurrent server streams: every message within credit, each call-blocked cost is the next message's, nothing after a call's end")
    func rawReaderSeesOrderedFrames() async throws {
        var router = ServiceRouter()
        router.registerServerStreaming(Download.self) { count, writer, _ in
            for index in 0..<count { try await writer.write(Self.big("d\(index)")) }
        }
        try await withServiceTestServer(router: router) { _, path in
            let peer = try await RawSocket.connect(to: path)
            defer { peer.close() }
            let ids: [UInt32] = [1, 3, 5, 7, 9]
            var bytes = serverHelloBytes
            for id in ids {
                bytes += callOpenBytes(id: id, method: Download.name) + messageBytes(id: id, json: "3") + callEndOKBytes(id: id)
            }
            try await peer.write(bytes)
            #expect(try await peer.read(exactly: 8) == serverHelloBytes)
            var credit = Dictionary(uniqueKeysWithValues: ids.map { ($0, 65_536) })
            var announced: [UInt32: Int] = [:]
            var tags: [UInt32: [String]] = [:]
            var ended: Set<UInt32> = []
            var problems: [String] = []
            while ended.count < ids.count {
                guard let frame = try await peer.readFrames(1).first, let id = frame.id else { continue }
                if ended.contains(id) { problems.append("frame \(frame) after the end of call \(id)") }
                switch frame.kind {
                case 0x0f:
                    let cost = Int(StrictCreditTests.u32(frame.payload))
                    announced[id] = cost
                    if cost > credit[id]! {
                        let grant = cost - credit[id]!
                        credit[id] = cost
                        try await peer.write(creditBytes(id: id, increment: UInt32(grant)))
                    } else {
                        problems.append("call \(id) blocked on \(cost) with \(credit[id]!) of credit")
                    }
                case 0x07:
                    let cost = 9 + frame.payload.count
                    if cost > credit[id]! { problems.append("call \(id): message of \(cost) beyond credit \(credit[id]!)") }
                    if let expected = announced.removeValue(forKey: id), expected != cost {
                        problems.append("call \(id): blocked on \(expected), then a message of \(cost)")
                    }
                    credit[id]! -= cost
                    let text = String(decoding: frame.payload.dropFirst().prefix(20), as: UTF8.self)
                    tags[id, default: []].append(Self.tag(of: text))
                    let back = 65_536 - credit[id]!
                    if back > 0 {
                        credit[id] = 65_536
                        try await peer.write(creditBytes(id: id, increment: UInt32(back)))
                    }
                case 0x08:
                    ended.insert(id)
                    if frame.payload.first != 0 { problems.append("call \(id) ended with \(frame.payload.first ?? 0xff)") }
                    if announced[id] != nil { problems.append("call \(id) ended with a message announced and not sent") }
                default:
                    problems.append("unexpected \(frame)")
                }
            }
            #expect(problems.isEmpty, "\(problems)")
            for id in ids { #expect(tags[id] == ["d0", "d1", "d2"], "call \(id): \(tags[id] ?? [])") }
        }
    }
}
