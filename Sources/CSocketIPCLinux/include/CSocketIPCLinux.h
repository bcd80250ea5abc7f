// The Linux system interfaces SocketIPC uses that the Glibc module does not export.
#ifndef C_SOCKET_IPC_LINUX_H
#define C_SOCKET_IPC_LINUX_H

#if defined(__linux__)
#include <sys/epoll.h>
#endif

#endif
