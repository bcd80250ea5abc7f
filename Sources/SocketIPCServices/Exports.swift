// The services layer's public API speaks of the runtime's types (Connection, Server, PeerCredentials) and of
// ByteBuffer; `import SocketIPC` brings them all, and so does `import SocketIPCServices` alone.

@_exported import SocketIPCRuntime
