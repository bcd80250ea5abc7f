// SocketIPC, as users import it: the runtime (servers, clients, connections) and the services layer (typed methods,
// streams, the reconnecting client), each a module of its own, re-exported so that `import SocketIPC` is enough.

@_exported import SocketIPCRuntime
@_exported import SocketIPCServices
