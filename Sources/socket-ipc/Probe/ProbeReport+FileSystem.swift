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
    /// The report for a path that the file system alone shows no client can connect to (too long, missing, its
    /// directory missing, not a socket, not reachable); `nil` when a socket is there and only a connection can tell.
    static func withoutConnecting(_ inspection: SocketFileInspection) -> ProbeReport? {
        let path = inspection.path
        func report(_ verdict: ProbeVerdict, _ headline: String, fix: String?) -> ProbeReport {
            ProbeReport(verdict: verdict, headline: headline, fix: fix, inspection: inspection)
        }
        if inspection.isPathTooLong {
            return report(
                .pathTooLong,
                "\(path) is \(inspection.pathLength) bytes, longer than the \(inspection.pathLimit) that sun_path holds",
                fix: "use a shorter path, for example in /tmp or $XDG_RUNTIME_DIR"
            )
        }
        // An abstract address has no file: only a connection can tell.
        if inspection.isAbstract { return nil }
        let entry: FileSummary
        switch inspection.entry {
        case .success(let found):
            entry = found
        case .failure(let error) where error.code == ENOENT || error.code == ENOTDIR:
            let directory = inspection.directory
            switch directory.status {
            case .failure(let error) where error.code == ENOENT || error.code == ENOTDIR:
                return report(
                    .missingParent,
                    "no such directory \(directory.path) (the parent of \(path))",
                    fix: "check the path, or create the directory (socket-ipc serve --create-parent makes it with "
                        + "mode 0700)"
                )
            case .success(let status) where status.kind != .directory:
                return report(
                    .missingParent,
                    "\(directory.path) (the parent of \(path)) is \(status.kind.description), not a directory",
                    fix: "check the path"
                )
            default:
                // A server whose socket file was removed by hand still holds its lock: it can no longer be reached,
                // and a new server cannot start until it stops (found by a review: "start the server" misled).
                if inspection.lock.isHeld == true, let holder = inspection.lock.holder {
                    return report(
                        .missing,
                        "no server at \(path): no such file, but process \(holder.description) holds "
                            + "\(inspection.lock.path): its socket file was removed, so it can no longer be reached",
                        fix: "stop that process and start the server again (socket-ipc serve \(path))"
                    )
                }
                return report(
                    .missing,
                    "no server at \(path): no such file",
                    fix: "start the server (socket-ipc serve \(path)), or check the path"
                )
            }
        case .failure(let error) where error.code == EACCES:
            let owner = inspection.directory.summary.map { " (\($0.ownershipDescription))" } ?? ""
            return report(
                .permissionDenied,
                "no permission to reach \(path): uid \(geteuid()) may not search \(inspection.directory.path)\(owner) "
                    + "or a directory above it",
                fix: "run as the server's user, or ask it to serve from a directory you may enter"
            )
        case .failure(let error):
            return report(.connectFailed, "cannot examine \(path): \(error) (errno \(error.code))", fix: nil)
        }
        switch entry.kind {
        case .socket:
            return nil
        case .symlink:
            // Whoever made the link chose its target: escaped, so that it cannot act on the terminal or forge a line.
            let target = inspection.linkTarget.map(SafeText.oneLine) ?? "?"
            switch inspection.linkDestination {
            case nil:
                return nil
            case .success(let destination) where destination.kind == .socket:
                return nil
            case .success(let destination):
                return report(
                    .notSocket,
                    "\(path) is a symbolic link to \(target), which is \(destination.kind.description), not a socket",
                    fix: "point the link at the server's socket, or use the socket's own path"
                )
            case .failure(let error) where error.code == ENOENT:
                return report(
                    .notSocket,
                    "\(path) is a symbolic link to \(target), where there is nothing: not a socket",
                    fix: "start the server on \(target), or point the link at the server's socket"
                )
            case .failure(let error):
                return report(
                    .notSocket,
                    "\(path) is a symbolic link to \(target), which cannot be reached (\(error)): not a socket",
                    fix: "point the link at the server's socket"
                )
            }
        default:
            return report(
                .notSocket,
                "\(path) is \(entry.kind.description), not a socket",
                fix: "check the path; a server never replaces \(entry.kind.description) (remove it if nothing uses it)"
            )
        }
    }

    /// The report for a socket path whose `connect` failed with `error` (code `connectionRefused`, `unauthorized`, or
    /// `timedOut` for a full accept queue), explained by what the file system says. An `unauthorized` error where the
    /// file system lets this process connect is the server's policy refusing it: the report keeps the error's message.
    /// - Parameters:
    ///   - error: What the connect threw.
    ///   - inspection: What the file system says about the path, looked at after the failure.
    ///   - timeout: How long the connect waited for a full accept queue, in seconds, for the message.
    static func afterConnectFailure(
        _ error: SocketIPCError,
        inspection: SocketFileInspection,
        timeout: Double? = nil
    ) -> ProbeReport {
        if let report = Self.withoutConnecting(inspection) { return report }
        let path = inspection.path
        let lock = inspection.lock
        func report(_ verdict: ProbeVerdict, _ headline: String, fix: String?) -> ProbeReport {
            ProbeReport(verdict: verdict, headline: headline, fix: fix, inspection: inspection)
        }
        switch error.code {
        case .connectionRefused where inspection.isAbstract:
            return report(
                .missing,
                "no server listens on the abstract address \(path)",
                fix: "start the server (abstract addresses exist only while a process listens on them)"
            )
        case .connectionRefused:
            if lock.isHeld == true, let holder = lock.holder {
                return report(
                    .notListening,
                    "no server listens on \(path), but process \(holder.description) holds \(lock.path)",
                    fix: "that server is starting, or its socket file was replaced: restart it"
                )
            }
            let holder = lock.isHeld == nil ? "nobody listens (whether a process holds \(lock.path) is unknown)"
                : "no process holds \(lock.path)"
            return report(
                .stale,
                "no server at \(path): stale socket, \(holder)",
                fix: "start the server again to reclaim it"
            )
        case .unauthorized where error.message.contains("not as a trusted user"):
            // This process refused the server before sending anything: the fix is an option of this command.
            return report(.refused, error.message, fix: Diagnosis.trustFix(for: error))
        case .unauthorized where inspection.mayConnect != false:
            // The file system lets this process in: the server's policy refused it, and the library says so.
            return report(.refused, error.message, fix: nil)
        case .unauthorized:
            let file =
                inspection.destination.map {
                    " (mode \($0.mode), owner \(AccountNames.describeUser($0.uid)), group "
                        + "\(AccountNames.describeGroup($0.gid)))"
                } ?? ""
            return report(
                .permissionDenied,
                "no permission to connect to \(path)\(file): uid \(geteuid()) may not write to it",
                fix: "run as its owner, or have the server open it to you (socket-ipc serve --permissions 0660 with a "
                    + "group of yours, or 0666; and --allow-uid \(geteuid()) for its policy)"
            )
        case .timedOut:
            let seconds = timeout.map { " within \(formatSeconds($0)) s" } ?? ""
            let holder = lock.holder.map { " (process \($0.description) holds \(lock.path))" } ?? ""
            return report(
                .queueFull,
                "a listener on \(path) accepted no connection\(seconds): its accept queue is full\(holder)",
                fix: "the server is overloaded or no longer accepting: look at that process"
            )
        default:
            return report(.connectFailed, error.message, fix: nil)
        }
    }
}
