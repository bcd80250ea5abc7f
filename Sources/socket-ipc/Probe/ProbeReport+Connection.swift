import SocketIPC

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ProbeReport {
    /// Looks at `path` and, when a socket is there, connects with ``Client/probe(_:timeout:trustedServerUserIDs:)``, which sends nothing
    /// but an empty EOF-style message and never calls a listener EOF-style only because it wrote a few bytes and
    /// closed.
    /// - Parameters:
    ///   - path: The socket path.
    ///   - timeout: Seconds to wait for the server to accept and to answer.
    ///   - trusted: The users a server on a shared path or an abstract address may run as (`--trust-uid`).
    /// - Returns: The report.
    static func investigate(_ path: String, timeout: Double, trusted: Set<UInt32>? = nil) async -> ProbeReport {
        let inspection = SocketFileInspection.inspect(path)
        if let report = Self.withoutConnecting(inspection) { return report }
        do {
            let result = try await Client.probe(path, timeout: duration(seconds: timeout), trustedServerUserIDs: trusted)
            return ProbeReport(result, inspection: inspection, timeout: timeout)
        } catch let error as SocketIPCError {
            // Look again: the failure may have come from the file changing since.
            return Self.afterConnectFailure(error, inspection: SocketFileInspection.inspect(path), timeout: timeout)
        } catch {
            return ProbeReport(verdict: .connectFailed, headline: "could not probe \(path): \(error)", inspection: inspection)
        }
    }

    /// The report for what a connection to a socket found.
    /// - Parameters:
    ///   - result: What ``Client/probe(_:timeout:trustedServerUserIDs:)`` found.
    ///   - inspection: What the file system says about the path.
    ///   - timeout: The seconds the probe waited, for the message of a silent listener.
    init(_ result: ProbeResult, inspection: SocketFileInspection, timeout: Double) {
        let path = inspection.path
        let peer = result.peer.map { ", peer \($0)" } ?? ""
        self.init(verdict: .connectFailed, headline: "", inspection: inspection, peer: result.peer)
        switch result.style {
        case .framed(let version) where version != Hello.version:
            self.verdict = .otherVersion
            self.protocolVersion = version
            self.headline =
                "framed SocketIPC server (protocol version \(version)) on \(path), but this socket-ipc speaks version "
                + "\(Hello.version) only: it would refuse this client\(peer)"
            self.fix = "use a socket-ipc that speaks protocol version \(version)"
        case .framed(let version):
            self.verdict = .framed
            self.protocolVersion = version
            self.headline = "framed SocketIPC server (protocol version \(version)) serves you\(peer)"
        case .endOfFile(let acknowledgementLength):
            self.verdict = .eof
            self.headline =
                "EOF-style server serves you: it read an empty message and closed with a "
                + "\(acknowledgementLength)-byte acknowledgement, without a hello\(peer)"
        case .framedRefused(let version, let reason, let message):
            self.protocolVersion = version
            self.goAway = GoAway(reason: reason, message: message)
            let text = message.isEmpty ? "" : " (\"\(message)\")"
            let server = "framed SocketIPC server (protocol version \(version)) on \(path)"
            if reason == 0x04 {
                self.verdict = .refused
                self.headline = "\(server) does not serve you: its authorization policy refused uid \(geteuid())\(text)"
                self.fix =
                    "run as a user it serves, or have it allow you (socket-ipc serve --allow-uid \(geteuid()), "
                    + "--allow-gid GID or --allow-anyone)"
            } else {
                self.verdict = .goingAway
                let why = reason == 0x00 ? "it is shutting down" : "it sent going-away reason 0x\(String(reason, radix: 16))"
                self.headline = "\(server) does not serve you: \(why)\(text)"
                self.fix = reason == 0x00 ? "try again once it has restarted" : nil
            }
        case .closedAtOnce:
            self.verdict = .closedAtOnce
            self.headline =
                "something listens on \(path) but closed the connection at once, without reading: a SocketIPC "
                + "server that refused this process, is at its connection limit or is shutting down, or another "
                + "program\(Self.describe(result.peer))"
        case .silent:
            self.verdict = .silent
            self.headline =
                "something listens on \(path) but sent nothing within \(formatSeconds(timeout)) s: not a SocketIPC "
                + "server, or one too busy to answer\(Self.describe(result.peer))"
            self.fix = "try a longer --timeout, or look at that process"
        case .otherProtocol:
            self.verdict = .otherProgram
            self.headline =
                "something listens on \(path) but does not speak SocketIPC: what it sent is neither a hello nor an "
                + "EOF-style acknowledgement that ends (another program\(Self.describe(result.peer, inParentheses: false)))"
            self.fix = "check the path: it is not a SocketIPC server's socket"
        }
    }

    /// `, process 1234 (socat) uid 0`: who a listener is, for a sentence; empty when unknown.
    private static func describe(_ peer: PeerCredentials?, inParentheses: Bool = true) -> String {
        guard let peer else { return "" }
        let who = "process \(ProcessName.describe(peer.processID)), uid \(peer.userID)"
        return inParentheses ? " (\(who))" : ": \(who)"
    }
}
