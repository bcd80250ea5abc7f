// The Linux system interfaces SocketIPC uses that the Glibc module does not export.
#ifndef C_SOCKET_IPC_LINUX_H
#define C_SOCKET_IPC_LINUX_H

#if defined(__linux__)
#include <sys/epoll.h>

/// pidfd_send_signal(2) (Linux 5.1), which glibc wraps only from 2.36 and Swift cannot call through the variadic
/// syscall(2): 0 when the signal (0 checks only that the process still runs) was sent, -1 with errno otherwise.
int csocketipc_pidfd_send_signal(int pidfd, int signal);
#endif

#endif
