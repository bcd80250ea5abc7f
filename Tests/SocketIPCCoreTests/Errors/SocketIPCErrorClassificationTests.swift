import Foundation
import SocketIPCCore
import Testing

@Suite("SocketIPCError classification")
struct SocketIPCErrorClassificationTests {
    /// One code, its category and whether it is retryable.
    struct Row: Sendable, CustomTestStringConvertible {
        var code: SocketIPCError.Code
        var category: SocketIPCError.Category
        var isRetryable: Bool

        init(_ code: SocketIPCError.Code, _ category: SocketIPCError.Category, retryable: Bool = false) {
            self.code = code
            self.category = category
            self.isRetryable = retryable
        }

        var testDescription: String { "\(self.code)" }
    }

    /// Every code SocketIPCError.swift declares, with what it means for the caller. A code added there without a row
    /// here fails ``tableListsEveryCode()``.
    static let table: [Row] = [
        Row(.connectionRefused, .unreachable, retryable: true),
        Row(.parentDirectoryMissing, .unreachable, retryable: true),
        Row(.peerGoingAway, .peerShuttingDown, retryable: true),
        Row(.unauthorized, .refused),
        Row(.connectionClosed, .connectionLost, retryable: true),
        Row(.peerNotResponding, .connectionLost, retryable: true),
        Row(.missingAcknowledgement, .connectionLost, retryable: true),
        Row(.notSocketIPCPeer, .protocolMismatch),
        Row(.unsupportedVersion, .protocolMismatch),
        Row(.protocolViolation, .protocolMismatch),
        Row(.wrongStyle, .protocolMismatch),
        Row(.timedOut, .timedOut),
        Row(.deadlineExceeded, .timedOut),
        Row(.remoteError, .remote),
        Row(.unknownMethod, .remote),
        Row(.invalidMessage, .remote),
        Row(.cancelled, .remote),
        Row(.resourceExhausted, .remote, retryable: true),
        Row(.invalidPath, .local),
        Row(.insecureDirectory, .local),
        Row(.addressInUse, .local),
        Row(.pathOccupied, .local),
        Row(.systemCall, .local),
        Row(.messageTooLarge, .local),
        Row(.invalidState, .local),
        Row(.invalidConfiguration, .local),
    ]

    @Test("each code has its category and retryability", arguments: table)
    func classification(row: Row) {
        let error = SocketIPCError(row.code, "test")
        #expect(error.category == row.category)
        #expect(error.isRetryable == row.isRetryable)
    }

    @Test("the table lists every code SocketIPCError.swift declares, once")
    func tableListsEveryCode() throws {
        let declared = try Self.declaredCodeNames()
        let listed = Self.table.map(\.code.description)
        #expect(declared.count >= 25, "the codes were read from the source: \(declared)")
        #expect(Set(listed).count == listed.count, "a code is listed twice")
        #expect(Set(listed) == Set(declared), "codes without a row: \(Set(declared).subtracting(listed))")
    }

    @Test("every category has a code")
    func everyCategoryIsUsed() {
        #expect(Set(Self.table.map(\.category)) == Set(SocketIPCError.Category.allCases))
    }

    /// The names of the `public static let NAME = Code("NAME")` declarations in SocketIPCError.swift.
    private static func declaredCodeNames() throws -> [String] {
        var directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        let relative = "Sources/SocketIPCCore/Errors/SocketIPCError.swift"
        while directory.pathComponents.count > 1 {
            let candidate = directory.appendingPathComponent(relative)
            if FileManager.default.fileExists(atPath: candidate.path) {
                let source = try String(contentsOf: candidate, encoding: .utf8)
                return source.split(separator: "\n").compactMap { line in
                    let declaration = /public static let (\w+) = Code\("\w+"\)/
                    return line.firstMatch(of: declaration).map { String($0.output.1) }
                }
            }
            directory.deleteLastPathComponent()
        }
        throw CocoaError(.fileNoSuchFile)
    }
}
