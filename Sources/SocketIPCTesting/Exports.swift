// `import SocketIPCTesting` alone is enough in a test: it brings SocketIPC (and what SocketIPC re-exports) along.

@_exported import SocketIPC
