import SocketIPCCore
import SocketIPCRuntime
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file descriptor inside a typed request, response or stream element: the descriptor itself travels beside the
/// message (`SCM_RIGHTS`), and the encoded value holds its index among the message's descriptors.
///
/// ```swift
/// struct OpenLog: ServiceMethod {
///     static let name = "log.open"
///     struct Request: Codable { var name: String }
///     struct Response: Codable { var file: PassedDescriptor }
/// }
/// // The handler: the client gets the open file.
/// router.register(OpenLog.self) { request, _ in
///     let file = try FileDescriptor.open("/var/log/" + request.name, .readOnly)
///     defer { try? file.close() }  // the value holds a duplicate
///     return OpenLog.Response(file: try PassedDescriptor(file))
/// }
/// // The caller owns what it got.
/// let log = try await client.call(OpenLog.self, .init(name: "app.log")).file.take()
/// ```
///
/// - Sending: ``init(_:)`` duplicates the descriptor, so the caller may close its own at once; the value owns the
///   duplicate, and the message carries another.
/// - Receiving: a decoded value owns its descriptor.
///
/// ``take()`` hands the value's descriptor over; one not taken is closed when the value is released.
///
/// Both sides' connections must pass descriptors (`ConnectionOptions.maximumDescriptorsPerMessage`). Encoding one on
/// a connection that does not throws an `EncodingError`; decoding one from a message that brought no descriptor at
/// its index throws a `DecodingError` (the call fails with `invalidMessage`). JSON shows it as `{"descriptor":N}`.
public final class PassedDescriptor: Codable, Sendable {
    /// The descriptor this value owns until it is taken; `nil` once taken.
    private let held: Mutex<Int32?>
    /// Whether the peer passed it (decoded), rather than this side (to send): only a passed one is closed with its
    /// `SO_LINGER` turned off (``closePassedDescriptors(_:passedBy:)``), since a sender's duplicate shares its owner's
    /// socket.
    private let isReceived: Bool
    /// The user who passed a received one (the peer's uid, `nil` when unknown), whose account its close is charged to.
    private let passedBy: UInt32?

    /// Duplicates `descriptor` (close-on-exec) to send it; the caller keeps its own.
    /// - Throws: `SocketIPCError` with code `systemCall` when it cannot be duplicated (`EBADF`: not open; `EMFILE`).
    public init(_ descriptor: FileDescriptor) throws {
        let copy = fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else {
            throw SocketIPCError(
                .systemCall,
                "could not duplicate descriptor \(descriptor.rawValue) to pass it: errno \(errno)"
            )
        }
        self.held = Mutex(copy)
        self.isReceived = false
        self.passedBy = nil
    }

    /// The descriptor, to use without taking it: valid while this value lives and the descriptor is not taken;
    /// `nil` once taken.
    public var descriptor: FileDescriptor? {
        self.held.withLock { $0.map { FileDescriptor(rawValue: $0) } }
    }

    /// Takes the descriptor: the caller owns it from now on and must close it. `nil` when it was taken already.
    public func take() -> FileDescriptor? {
        self.held.withLock { $0.take().map { FileDescriptor(rawValue: $0) } }
    }

    deinit {
        guard let raw = self.held.withLock({ $0.take() }) else { return }
        if self.isReceived { closePassedDescriptors([raw], passedBy: self.passedBy) } else { closeDescriptors([raw]) }
    }

    private enum CodingKeys: String, CodingKey {
        case descriptor
    }

    /// Encodes the descriptor's index among the message's descriptors.
    /// - Throws: `EncodingError.invalidValue` outside a call message of a connection that passes descriptors, or
    ///   for a descriptor taken already.
    public func encode(to encoder: any Encoder) throws {
        guard let outgoing = DescriptorCoding.outgoing else {
            throw EncodingError.invalidValue(
                self,
                EncodingError.Context(
                    codingPath: encoder.codingPath,
                    debugDescription: "a PassedDescriptor travels only in a call message on a connection that passes "
                        + "descriptors (ConnectionOptions.maximumDescriptorsPerMessage on both sides)"
                )
            )
        }
        guard let raw = self.descriptor?.rawValue else {
            throw EncodingError.invalidValue(
                self,
                EncodingError.Context(codingPath: encoder.codingPath, debugDescription: "the descriptor was taken")
            )
        }
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(outgoing.add(raw), forKey: .descriptor)
    }

    /// Decodes the index and takes that descriptor of the message.
    /// - Throws: `DecodingError.dataCorrupted` when the message brought no descriptor at that index, or it was
    ///   decoded already.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let index = try container.decode(Int.self, forKey: .descriptor)
        guard let incoming = DescriptorCoding.incoming, let raw = incoming.take(at: index) else {
            throw DecodingError.dataCorruptedError(
                forKey: .descriptor,
                in: container,
                debugDescription: "the message brought no descriptor at index \(index) (or it was decoded twice)"
            )
        }
        self.held = Mutex(raw)
        self.isReceived = true
        self.passedBy = incoming.passedBy
    }
}
