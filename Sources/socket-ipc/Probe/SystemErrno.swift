// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An `errno` value from a failed system call, with its text.
struct SystemErrno: Error, Sendable, Equatable, CustomStringConvertible {
    /// The `errno` value, such as `ENOENT`.
    let code: Int32

    init(_ code: Int32) {
        self.code = code
    }

    /// `strerror`'s text, such as "No such file or directory".
    var description: String { String(cString: strerror(self.code)) }
}
