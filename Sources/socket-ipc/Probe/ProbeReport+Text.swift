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
    /// The lines after the verdict line, each `  label: text`:
    ///
    /// ```
    ///   socket:    a socket, owner alice (uid 1000), group alice (gid 1000), mode 0600
    ///   directory: /run/user/1000, owner alice (uid 1000), group alice (gid 1000), mode 0700: safe
    ///   path:      28 bytes; the limit is 107
    ///   access:    uid 1000 may connect (write permission on the socket file)
    ///   lock:      /run/user/1000/app.sock.lock, held by process 4242 (app-daemon)
    ///   server:    pid=4242 uid=1000 gid=1000 (app-daemon)
    /// ```
    var detailLines: [String] {
        let inspection = self.inspection
        var lines: [(String, String)] = []
        if inspection.isAbstract {
            // No file, directory or lock file: only the address and what a connection found.
            lines.append(("address", "abstract (Linux): no file; any process in this network namespace may connect"))
            lines.append(("path", "\(inspection.pathLength) bytes of name; the limit is \(inspection.pathLimit)"))
            if let peer = self.peer {
                let command = ProcessName.of(peer.processID).map { " (\($0))" } ?? ""
                lines.append(("server", "\(peer)\(command)"))
            }
            return Self.aligned(lines)
        }
        switch inspection.entry {
        case .success(let entry):
            lines.append(("socket", "\(entry.kind.description), \(entry.ownershipDescription)"))
        case .failure(let error):
            lines.append(("socket", "none (\(error))"))
        }
        if let target = inspection.linkTarget {
            let destination =
                switch inspection.linkDestination {
                case .success(let status): "\(status.kind.description), \(status.ownershipDescription)"
                case .failure(let error): "nothing (\(error))"
                case nil: "?"
                }
            lines.append(("link", "-> \(SafeText.oneLine(target)): \(destination)"))
        }
        lines.append(("directory", self.directoryDescription))
        lines.append(("path", "\(inspection.pathLength) bytes; the limit is \(inspection.pathLimit)"))
        if let mayConnect = inspection.mayConnect {
            lines.append(
                (
                    "access",
                    mayConnect
                        ? "uid \(geteuid()) may connect (write permission on the socket file)"
                        : "uid \(geteuid()) may not connect (no write permission on the socket file, or no search "
                            + "permission on a directory on the way)"
                )
            )
        }
        lines.append(("lock", "\(inspection.lock.path), \(inspection.lock.stateDescription)"))
        if let peer = self.peer {
            let command = ProcessName.of(peer.processID).map { " (\($0))" } ?? ""
            lines.append(("server", "\(peer)\(command)"))
        }
        if let goAway = self.goAway {
            lines.append(("going away", "reason 0x\(String(goAway.reason, radix: 16)) \"\(goAway.message)\""))
        }
        return Self.aligned(lines)
    }

    /// `  label: text` for each line, the texts aligned.
    private static func aligned(_ lines: [(String, String)]) -> [String] {
        let width = lines.map(\.0.count).max() ?? 0
        return lines.map { label, text in
            "  \(label):" + String(repeating: " ", count: width - label.count + 1) + text
        }
    }

    private var directoryDescription: String {
        let directory = self.inspection.directory
        switch directory.status {
        case .success(let status) where status.kind == .directory:
            let safety = directory.unsafeReason.map { "not safe: \($0)" } ?? "safe"
            return "\(directory.path), \(status.ownershipDescription): \(safety)"
        case .success(let status):
            return "\(directory.path): \(status.kind.description), not a directory"
        case .failure(let error):
            return "\(directory.path): \(error)"
        }
    }
}
