// What SocketIPC's public API shows from other modules, re-exported so that `import SocketIPC` alone is enough
// (as hummingbird's `Exports.swift` does).

@_exported import SocketIPCCore
@_exported import struct Logging.Logger
@_exported import struct NIOCore.ByteBuffer
@_exported import struct NIOCore.ByteBufferAllocator
@_exported import struct SystemPackage.FileDescriptor
