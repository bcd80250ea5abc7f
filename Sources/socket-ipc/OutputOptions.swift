import ArgumentParser

/// The options every command has for how much it says: `--quiet` and `--verbose`.
///
/// Results go to standard output and diagnostics to standard error whatever these say; `--quiet` drops the
/// diagnostics that are not errors (progress, `listening on`, notes) and `--verbose` adds details (each reply of a
/// `request --count`, each connection of `listen`).
struct OutputOptions: ParsableArguments {
    @Flag(name: [.short, .long], help: "Print results and errors only: no progress, no notes.")
    var quiet = false

    @Flag(name: [.short, .long], help: "Print more: details of each step.")
    var verbose = false

    func validate() throws {
        if self.quiet && self.verbose { throw ValidationError("--quiet and --verbose exclude each other") }
    }

    /// Sets ``Output/verbosity`` from the flags; every command calls it first.
    func apply() {
        Output.verbosity = self.quiet ? .quiet : self.verbose ? .verbose : .normal
    }
}
