import ArgumentParser
import SocketIPC

// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `socket-ipc probe`: the "why can't I connect" doctor. Says what is at a socket path (a SocketIPC server that
/// serves you, one that refuses you, a stale socket, another program, nothing...), with the file system's details and
/// the fix.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell what is at a socket path and why you can or cannot connect to it.",
        discussion: """
            Prints one verdict line first, then details (not with --quiet), all on \
            standard output:

              $ socket-ipc probe /run/app.sock
              framed SocketIPC server (protocol version 1) serves you, peer ...
                socket:    a socket, owner app (uid 990), group app (gid 990), ...
                directory: /run, owner root (uid 0), ..., mode 0755: safe
                path:      13 bytes; the limit is 107
                access:    uid 990 may connect (write permission on the ...)
                lock:      /run/app.sock.lock, held by process 4242 (app-daemon)
                server:    pid=4242 uid=990 gid=990 (app-daemon)

            It looks at the file system first (lstat of PATH, and where a symbolic link points; the directory's \
            owner, group, mode and whether it is safe by the library's rule: owned by root or the socket's owner, \
            not writable by others without the sticky bit, nor any directory above it; the path's length against \
            sun_path; who holds the server's lock file PATH.lock, from /proc/locks). Only when a socket is there \
            does it connect: it waits a moment without sending anything (a framed server sends its hello at once), \
            then half-closes (an empty EOF-style message) and reads what comes back. It never calls a listener \
            EOF-style only because it wrote a few bytes and closed.

            Verdicts (the `verdict` of --json) and exit statuses: framed, eof (a SocketIPC server that serves you: \
            0); refused (its policy refused you), permissionDenied (the socket file's mode, or a directory on the \
            way: EACCES): 4; and 3 for the rest: silent (nothing within --timeout), otherVersion (a framed server of \
            another protocol version, which would refuse this client), goingAway (shutting down), \
            closedAtOnce (closed without reading), otherProgram (not SocketIPC), queueFull (the accept queue stayed \
            full), stale (nobody listens and no process holds PATH.lock), notListening (nobody listens but a \
            process holds PATH.lock), missing, missingParent, notSocket (a regular file, a directory, a symbolic \
            link to something else or to nothing), connectFailed; pathTooLong: 64 (a usage error, as for every \
            command).

            --json prints one object; every key is always there, null when it does \
            not apply or is unknown:
              path, verdict, message (the verdict line without the fix), fix,
              servesYou (bool), exitStatus, protocolVersion,
              goAway {reason, message}, peer {pid, uid, gid, command},
              socket {type, uid, user, gid, group, mode}: the entry at PATH
                itself (not followed); null when there is none,
              link {target, type}: a symbolic link's text, what it leads to,
              directory {path, type, uid, user, gid, group, mode, safe,
                unsafeReason},
              pathLength, pathLimit (bytes),
              canConnect (write permission for you; null without a socket),
              lock {path, exists, held, holderPid, holderCommand},
              abstract (bool): PATH is @name, an address in Linux's abstract
                namespace; socket, directory, lock and canConnect are then null.
            type is one of socket, file, directory, symlink, fifo, \
            characterDevice, blockDevice, other; mode is octal text such as "0600".

            Examples:
              socket-ipc probe /run/app.sock
              socket-ipc probe app.sock --timeout 5   (in $XDG_RUNTIME_DIR)
              socket-ipc probe /run/app.sock --quiet  (the verdict line only)
              socket-ipc probe /run/app.sock --json | jq -r .verdict
              socket-ipc probe /run/app.sock && echo "it serves me"
            """
    )

    @Argument(help: socketArgumentHelp)
    var socket: String

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server to answer.", valueName: "seconds"))
    var timeout: Double = 2

    @Flag(name: .long, help: "Print one JSON object (the schema is above) instead of text.")
    var json = false

    @OptionGroup
    var trust: ServerTrustOptions

    @OptionGroup(title: "Output")
    var output: OutputOptions

    func validate() throws {
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        self.output.apply()
        let path = try socketPath(fromArgument: self.socket, creatingDirectory: false)
        let report = await ProbeReport.investigate(path, timeout: self.timeout, trusted: self.trust.trustedServerUserIDs)
        if self.json {
            Output.json(report.jsonObject)
        } else {
            Output.line(Output.colored(report.line, report.verdict.servesYou ? 32 : 31, on: STDOUT_FILENO))
            if Output.verbosity >= .normal {
                for line in report.detailLines { Output.line(line) }
            }
        }
        if !report.verdict.servesYou { throw report.verdict.exitStatus }
    }
}
