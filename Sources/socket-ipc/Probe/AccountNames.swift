// Written for Linux (Glibc, Musl) and Darwin; tested on Linux only, Darwin is untested.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The names of user and group ids, from the system's account databases (`getpwuid_r`, `getgrgid_r`).
enum AccountNames {
    /// The login name of `uid`, or `nil` when no account has it.
    static func userName(_ uid: UInt32) -> String? {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var storage = [CChar](repeating: 0, count: 4096)
        return storage.withUnsafeMutableBufferPointer { buffer in
            guard getpwuid_r(uid_t(uid), &entry, buffer.baseAddress!, buffer.count, &found) == 0, found != nil,
                let name = entry.pw_name
            else { return nil }
            return String(cString: name)
        }
    }

    /// The name of group `gid`, or `nil` when no group has it.
    static func groupName(_ gid: UInt32) -> String? {
        var entry = group()
        var found: UnsafeMutablePointer<group>?
        var storage = [CChar](repeating: 0, count: 16384)
        return storage.withUnsafeMutableBufferPointer { buffer in
            guard getgrgid_r(gid_t(gid), &entry, buffer.baseAddress!, buffer.count, &found) == 0, found != nil,
                let name = entry.gr_name
            else { return nil }
            return String(cString: name)
        }
    }

    /// `alice (uid 1000)`, or `uid 1000` when no account has it.
    static func describeUser(_ uid: UInt32) -> String {
        Self.userName(uid).map { "\($0) (uid \(uid))" } ?? "uid \(uid)"
    }

    /// `staff (gid 50)`, or `gid 50` when no group has it.
    static func describeGroup(_ gid: UInt32) -> String {
        Self.groupName(gid).map { "\($0) (gid \(gid))" } ?? "gid \(gid)"
    }
}
