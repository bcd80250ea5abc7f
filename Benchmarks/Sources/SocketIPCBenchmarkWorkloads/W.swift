import SocketIPC
