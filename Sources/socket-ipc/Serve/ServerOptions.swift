import ArgumentParser
import Logging
import SocketIPC

/// The options `serve` and `listen` share: the socket file, who may connect, the limits, and what to log.
struct ServerOptions: ParsableArguments {
    @OptionGroup(title: "Socket file")
    var socketFile: SocketFileOptions

    @OptionGroup(title: "Who may connect")
    var access: AccessOptions

    @OptionGroup(title: "Limits")
    var limits: LimitOptions

    @Option(
        name: .long,
        help: ArgumentHelp("What to log on standard error: trace, debug, info, notice, warning, error or critical.")
    )
    var logLevel: Logger.Level = .notice

    /// The server's configuration for `path`, or for `inheritedSocket` when socket activation passed one.
    /// - Throws: ``UsageError`` for file options where there is no file of ours; `ValidationError` for bad
    ///   permissions.
    func configuration(path: String, inheritedSocket: InheritedSocket? = nil) throws -> ServerConfiguration {
        try ServerConfiguration(
            path: path,
            inheritedSocket: inheritedSocket,
            socketFile: self.socketFile,
            access: self.access,
            limits: self.limits
        )
    }

    /// The logger of the server: label `socket-ipc`, at ``logLevel``.
    var logger: Logger {
        var logger = Logger(label: "socket-ipc")
        logger.logLevel = self.logLevel
        return logger
    }
}
