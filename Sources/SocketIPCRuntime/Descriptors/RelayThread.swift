#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts the detached threads of a ``DescriptorRelay``, with a small stack: each only loops over one buffer on the
/// heap.
enum RelayThread {
    /// The stack of a relay thread: 128 KiB.
    static let stackSize = 128 * 1024

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Runs `body` on a new detached thread.
    /// - Throws: `SocketIPCError` with code `systemCall` when `pthread_create` fails (`EAGAIN`: the process or user
    ///   is at its limit of threads).
    static func start(_ body: @escaping @Sendable () -> Void) throws {
        let attributes = UnsafeMutablePointer<pthread_attr_t>.allocate(capacity: 1)
        pthread_attr_init(attributes)
        defer {
            pthread_attr_destroy(attributes)
            attributes.deallocate()
        }
        pthread_attr_setstacksize(attributes, Self.stackSize)
        pthread_attr_setdetachstate(attributes, Int32(PTHREAD_CREATE_DETACHED))
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
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
                #else
                let body = Unmanaged<Body>.fromOpaque(context!).takeRetainedValue()
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
