#if os(Linux)
import CSocketIPCLinux
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts the library's own threads (the accepting thread, the EOF acknowledgement waiter, the descriptor relays)
/// with `pthread_create`, so that the runtime needs no Foundation (`Thread`), whose libraries (and ICU's) would
/// add several MiB to every process's resident memory.
enum DetachedThread {
    private final class Body {
        let name: String
        let run: () -> Void
        init(name: String, _ run: @escaping () -> Void) {
            self.name = name
            self.run = run
        }
    }

    /// Runs `body` on a new detached thread named `name` (at most 15 bytes show, as `prctl(PR_SET_NAME)` and
    /// `pthread_setname_np` allow).
    /// - Parameters:
    ///   - name: The thread's name, as `top -H` and debuggers show it.
    ///   - stackSize: The thread's stack in bytes; `nil` for the system's default (8 MiB of address space on Linux,
    ///     of which only the pages used become resident).
    ///   - body: What the thread runs.
    /// - Throws: `SocketIPCError` with code `systemCall` when `pthread_create` fails (`EAGAIN`: the process or user
    ///   is at its limit of threads).
    static func start(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) throws {
        let attributes = UnsafeMutablePointer<pthread_attr_t>.allocate(capacity: 1)
        pthread_attr_init(attributes)
        defer {
            pthread_attr_destroy(attributes)
            attributes.deallocate()
        }
        if let stackSize { pthread_attr_setstacksize(attributes, stackSize) }
        pthread_attr_setdetachstate(attributes, Int32(PTHREAD_CREATE_DETACHED))
        let context = Unmanaged.passRetained(Body(name: name, body)).toOpaque()
        #if canImport(Darwin)
        var thread: pthread_t? = nil
        #else
        var thread: pthread_t = 0
        #endif
        let result = pthread_create(
            &thread,
            attributes,
            { context in
                #if canImport(Darwin)
                let body = Unmanaged<Body>.fromOpaque(context).takeRetainedValue()
                _ = pthread_setname_np(String(decoding: body.name.utf8.prefix(15), as: UTF8.self))
                #else
                let body = Unmanaged<Body>.fromOpaque(context!).takeRetainedValue()
                _ = csocketipc_set_thread_name(body.name)
                #endif
                body.run()
                return nil
            },
            context
        )
        if result != 0 {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SocketIPCError.systemCall("pthread_create", errno: result)
        }
    }
}
