#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether a directory could let another user replace the socket file in it, checked the way OpenSSH's
/// `safe_path` checks an agent socket's directory: the directory and every ancestor of its real path must be owned
/// by root or by this process's effective user, and none may be writable by others unless it has the sticky bit
/// (as `/tmp` has, `1777`: there only an entry's owner may remove or rename it).
///
/// A directory that fails lets another user unlink the socket file, or rename a directory on the way to it, and
/// put their own listener where clients look for this server's.
///
/// The path as configured is checked too, not only its real path: every symbolic link met on the way to the
/// directory must belong to root or to this process's effective user, and the directory it is in must pass the same
/// check, so that nobody else can point it elsewhere later. This is the rule of Linux's `fs.protected_symlinks`
/// (which only some systems turn on, and only for sticky world-writable directories), applied to every link on the
/// way, as systemd's `chase()` refuses unsafe transitions with `CHASE_SAFE`. A directory the path leaves through `..`
/// is held to the same rule, since whoever may replace it with a link decides where that `..` leads.
enum DirectorySecurity {
    /// Checks the directory open at `descriptor` (reached through `path`) and every ancestor of its real path.
    ///
    /// - Parameters:
    ///   - descriptor: An open descriptor on the directory; its identity must match what `path` resolves to.
    ///   - path: The directory's path as configured, for `realpath` and for messages.
    ///   - socketPath: The socket path the error concerns.
    /// - Throws: ``SocketIPCError`` with code `insecureDirectory` naming the directory, its owner and mode, and how
    ///   to opt out; `systemCall` when a directory cannot be examined.
    static func check(descriptor: Int32, path: String, socketPath: SocketPath) throws {
        let opened = try FileStatus.of(descriptor: descriptor, describedAs: path)
        guard let resolved = Self.realPath(path) else {
            throw SocketIPCError.systemCall("realpath", errno: errno, path: path)
        }
        guard let named = FileStatus.following(resolved), named.identity == opened.identity else {
            throw SocketIPCError(
                .insecureDirectory,
                "the directory \(path) was replaced while it was being checked; the socket \(socketPath) was not "
                    + "created",
                path: socketPath.path
            )
        }
        try Self.require(opened, at: resolved == path ? path : "\(resolved) (reached as \(path))", socketPath: socketPath)
        try Self.requireAncestors(of: resolved, socketPath: socketPath)
        try Self.requireSafeLinks(on: path, socketPath: socketPath)
    }

    /// Checks every ancestor of the real path `resolved`, up to `/`.
    private static func requireAncestors(of resolved: String, socketPath: SocketPath) throws {
        var current = resolved
        while current != "/" {
            current = Self.parent(of: current)
            var info = stat()
            guard lstat(current, &info) == 0 else {
                throw SocketIPCError.systemCall("lstat", errno: errno, path: current)
            }
            try Self.require(FileStatus(info), at: current, socketPath: socketPath)
        }
    }

    /// The most symbolic links followed on the way to one directory, as Linux's `MAXSYMLINKS`.
    private static let maximumLinks = 40

    /// Resolves `path` one component at a time, as the kernel does, and requires of every symbolic link on the way
    /// that it belongs to root or to this process's effective user, and that the directory it is in (and that
    /// directory's ancestors) passes ``problem(with:at:)``.
    private static func requireSafeLinks(on path: String, socketPath: SocketPath) throws {
        var pending = Self.components(of: path).reversed() as [String]
        var current: String
        if path.hasPrefix("/") {
            current = "/"
        } else {
            guard let workingDirectory = Self.realPath(".") else {
                throw SocketIPCError.systemCall("realpath", errno: errno, path: ".")
            }
            current = workingDirectory
        }
        var links = 0
        while let name = pending.popLast() {
            if name == "." { continue }
            if name == ".." {
                // `current` has no links left in it, so its parent is the real one, for now: whoever may replace
                // the directory being left (its owner, in a sticky directory) could put a link there and send `..`
                // elsewhere. So it is held to the rule of a link on the way.
                try Self.requireEntry(current, leftThrough: path, socketPath: socketPath)
                current = Self.parent(of: current)
                continue
            }
            let candidate = current == "/" ? "/" + name : current + "/" + name
            var info = stat()
            guard lstat(candidate, &info) == 0 else {
                throw SocketIPCError.systemCall("lstat", errno: errno, path: candidate)
            }
            guard info.st_mode & S_IFMT == S_IFLNK else {
                current = candidate
                continue
            }
            links += 1
            guard links <= Self.maximumLinks else {
                throw SocketIPCError.systemCall("realpath", errno: ELOOP, path: path)
            }
            try Self.requireOnlyOursMayReplace(
                owner: info.st_uid,
                in: current,
                holding: "the symbolic link \(candidate)",
                socketPath: socketPath
            ) { owner, me in
                "the path \(path) goes through the symbolic link \(candidate), which belongs to uid \(owner): that "
                    + "user could point it at a directory of their own, where this server's clients would find their "
                    + "listener; this process runs as uid \(me)"
            }
            let target = try Self.linkTarget(candidate)
            if target.hasPrefix("/") { current = "/" }
            pending.append(contentsOf: Self.components(of: target).reversed())
        }
    }

    /// Requires of the directory `entry`, left through a `..` of `path`, what a symbolic link on the way must
    /// satisfy (see ``requireOnlyOursMayReplace(owner:in:holding:socketPath:ownerProblem:)``).
    private static func requireEntry(_ entry: String, leftThrough path: String, socketPath: SocketPath) throws {
        guard entry != "/" else { return }
        var info = stat()
        guard lstat(entry, &info) == 0 else {
            throw SocketIPCError.systemCall("lstat", errno: errno, path: entry)
        }
        try Self.requireOnlyOursMayReplace(
            owner: info.st_uid,
            in: Self.parent(of: entry),
            holding: "\(entry), left through `..`",
            socketPath: socketPath
        ) { owner, me in
            "the path \(path) leaves the directory \(entry) through `..`, and that directory belongs to uid \(owner): "
                + "that user could replace it with a symbolic link and send `..` to a directory of their own, where "
                + "this server's clients would find their listener; this process runs as uid \(me)"
        }
    }

    /// Requires of an entry on the way (a symbolic link, or a directory left through `..`) that only root or this
    /// process's effective user could replace it: it belongs to one of them (else the refusal says
    /// `ownerProblem(owner, me)`), and the directory `holder` it is in, with that directory's ancestors, passes
    /// ``problem(with:at:)``, since whoever may replace entries there may replace it.
    private static func requireOnlyOursMayReplace(
        owner: uid_t,
        in holder: String,
        holding what: String,
        socketPath: SocketPath,
        ownerProblem: (_ owner: uid_t, _ me: uid_t) -> String
    ) throws {
        let me = geteuid()
        if owner != 0 && owner != me {
            try Self.refuse(ownerProblem(owner, me), socketPath: socketPath)
        }
        var directory = stat()
        guard lstat(holder, &directory) == 0 else {
            throw SocketIPCError.systemCall("lstat", errno: errno, path: holder)
        }
        try Self.require(FileStatus(directory), at: "\(holder) (holding \(what))", socketPath: socketPath)
        try Self.requireAncestors(of: holder, socketPath: socketPath)
    }

    private static func components(of path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }

    private static func linkTarget(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { readlink(path, $0.baseAddress!, $0.count - 1) }
        guard count >= 0 else { throw SocketIPCError.systemCall("readlink", errno: errno, path: path) }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Why a directory with `status` is unsafe for this process's sockets, or `nil` when it is safe.
    static func problem(with status: FileStatus, at path: String) -> String? {
        let me = geteuid()
        let description = "\(path) (owner uid \(status.owner), mode \(status.octalPermissions))"
        if !status.isDirectory {
            return "\(description) is \(status.kindDescription), not a directory"
        }
        if status.owner != 0 && status.owner != me {
            return "the directory \(description) belongs to another user, who could replace the socket file; "
                + "this process runs as uid \(me)"
        }
        if status.othersMayReplaceEntries {
            return "the directory \(description) can be written by other users and has no sticky bit, so they "
                + "could replace the socket file"
        }
        return nil
    }

    private static func require(_ status: FileStatus, at path: String, socketPath: SocketPath) throws {
        guard let problem = Self.problem(with: status, at: path) else { return }
        try Self.refuse(problem, socketPath: socketPath)
    }

    private static func refuse(_ problem: String, socketPath: SocketPath) throws -> Never {
        throw SocketIPCError(
            .insecureDirectory,
            "\(problem); \(socketPath) was not created: use a directory only you (or root) can write, such as "
                + "$XDG_RUNTIME_DIR, or opt out if you trust the directory anyway "
                + "(ServerConfiguration.requiresSecureParentDirectory = false; socket-ipc serve --allow-insecure-directory)",
            path: socketPath.path
        )
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }
}
