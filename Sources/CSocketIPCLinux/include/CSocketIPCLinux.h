// The Linux system interfaces SocketIPC uses that the Glibc module does not export.
#ifndef C_SOCKET_IPC_LINUX_H
#define C_SOCKET_IPC_LINUX_H

#if defined(__linux__)
#include <stddef.h>
#include <sys/epoll.h>

/// pidfd_send_signal(2) (Linux 5.1), which glibc wraps only from 2.36 and Swift cannot call through the variadic
/// syscall(2): 0 when the signal (0 checks only that the process still runs) was sent, -1 with errno otherwise.
int csocketipc_pidfd_send_signal(int pidfd, int signal);

/// The most descriptors one message may carry: the kernel's SCM_MAX_FD.
#define CSOCKETIPC_MAX_DESCRIPTORS 253

/// recvmsg(2) of up to `length` bytes into `bytes`, with room for `maximum` (at most 253) passed descriptors, taken
/// with MSG_CMSG_CLOEXEC and `flags` (MSG_DONTWAIT, or 0); retried on EINTR. Stores the descriptors received
/// (SCM_RIGHTS) in `descriptors` and their number in `count`, and sets `truncated` to 1 when the kernel cut the control data (MSG_CTRUNC: descriptors were
/// dropped) or data other than SCM_RIGHTS and SCM_CREDENTIALS came, and to 2 when the kernel cut the control data
/// (MSG_CTRUNC) with nothing else wrong: the buffer holds all one recvmsg can bring, so this process could not take
/// the descriptors (out of descriptors, or refused by a security module). Returns the bytes read, 0 at end-of-stream, or
/// -1 with errno.
long csocketipc_receive_with_descriptors(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated,
    int flags);

/// As csocketipc_receive_with_descriptors with MSG_PEEK and MSG_DONTWAIT (the bytes and descriptors stay queued), but
/// with a control buffer that has room for only `maximum` descriptors (0 to 253) beside the credentials, a pidfd and
/// a security label: a peek hands back at most `maximum` of the peer's descriptors (copies the kernel put in room
/// the others left are closed at once), and sets `truncated` to 2 when it passed more. Dropping or closing the copies
/// releases nothing (the queued message holds them).
long csocketipc_peek_with_descriptors(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated);

/// sendmsg(2) of up to `length` bytes with `count` descriptors (SCM_RIGHTS) attached, and MSG_NOSIGNAL; retried
/// on EINTR. Returns the bytes sent (the descriptors travel with the first of them), or -1 with errno.
long csocketipc_send_with_descriptors(
    int socket, const void *bytes, unsigned long length, const int *descriptors, int count);

/// The memory of a connection's read buffers: malloc(3), except that blocks of 256 KiB or more freed on a thread are
/// kept for that thread's next ones, at most 4 of them (freed when the thread ends). A connection then needs no pool
/// of read buffers of its own (SwiftNIO keeps up to 4 per channel, as large as its largest read, for as long as it is
/// open), and a large read still gets memory already mapped, without the page faults of fresh memory.
void *csocketipc_read_buffer_allocate(size_t size);
/// realloc(3) for csocketipc_read_buffer_allocate's memory.
void *csocketipc_read_buffer_reallocate(void *pointer, size_t old_size, size_t new_size);
/// Frees (or keeps for the thread's next large read buffer) memory of csocketipc_read_buffer_allocate.
void csocketipc_read_buffer_free(void *pointer);

/// memfd_create(2) with MFD_CLOEXEC and MFD_ALLOW_SEALING: a descriptor of anonymous shared memory, or -1 with errno.
int csocketipc_memfd_create(const char *name);

/// accept4(2) with SOCK_CLOEXEC and SOCK_NONBLOCK: the accepted descriptor, close-on-exec and non-blocking from the
/// start (no fcntl(2) calls after it), or -1 with errno.
int csocketipc_accept_nonblocking_cloexec(int descriptor);

/// pipe2(2) with O_CLOEXEC into ends[0] (read) and ends[1] (write): 0, or -1 with errno.
int csocketipc_pipe_cloexec(int ends[2]);

/// Names the calling thread (prctl(PR_SET_NAME): the first 15 bytes show in /proc and debuggers): 0, or -1 with errno.
int csocketipc_set_thread_name(const char *name);

/// Starts the program at `path` with `arguments` and `environment` (each ending with NULL), as posix_spawn(3) would
/// with POSIX_SPAWN_SETPGROUP (a process group of its own), POSIX_SPAWN_SETSIGDEF for every signal and an empty
/// signal mask; `input`, `output` and `error` become its descriptors 0, 1 and 2, and every other one is closed on
/// exec. Unlike posix_spawn, the child also gets PR_SET_PDEATHSIG with SIGKILL: it is killed when the thread that
/// started it ends, and so when this process ends, even by SIGKILL (which leaves no chance to kill it otherwise).
/// Call it on a thread that lives as long as the child should. Returns the child's process id, or -1 with errno
/// (the child's, when exec failed: the child has then been reaped). A `descriptor_soft_limit` of 0 or more lowers the
/// child's soft RLIMIT_NOFILE to it before exec where it is higher (the limit this process started with, which a
/// server raised for its connections: a program that uses select(2) breaks on descriptors above 1024, so Go's
/// os/exec and systemd give children the original soft limit back); -1 leaves the limit as it is.
int csocketipc_spawn_killed_with_parent(
    const char *path, char *const arguments[], char *const environment[], int input, int output, int error,
    long long descriptor_soft_limit);

/// poll(2)'s POLLRDHUP (the peer, or another holder, shut down the reading side), which <poll.h> shows only with
/// _GNU_SOURCE.
extern const short csocketipc_pollrdhup;

/// Sets SO_PASSRIGHTS on a Unix domain socket (Linux 6.16 and later): off, a peer's sendmsg(2) with SCM_RIGHTS fails
/// with EPERM, so no descriptor it passes ever reaches this process, whose read or close would drop it (and could
/// block for as long as the peer chose, as the last close of a socket with SO_LINGER does). A connection takes the
/// listening socket's setting when it is made. 0, or -1 with errno (ENOPROTOOPT before Linux 6.16).
int csocketipc_set_pass_rights(int socket, int on);

/// Closes a descriptor a peer passed, first turning SO_LINGER off if it is a socket with SO_LINGER on and a time: the
/// last close of a TCP socket with SO_LINGER set whose send queue cannot drain would otherwise block the calling
/// thread for as long as the peer chose. The setting is the socket's, so its other holders (the sender's copy, if the
/// sender kept one) see it off too. The result of close(2).
int csocketipc_close_passed(int descriptor);

/// Whether the last close of `descriptor`, a descriptor a peer passed, may wait for something the peer controls: 0
/// for shared memory (a memfd: F_GET_SEALS succeeds), a pipe (F_GETPIPE_SZ succeeds) and a socket other than a
/// Unix-domain one without SO_LINGER (csocketipc_close_passed turns a passed one's off), whose closes never wait; 2
/// for a Unix-domain socket, whose queue may hold descriptors in flight whose last close comes with its own; 1 for
/// anything else: another socket with SO_LINGER on and a time; a file, whose close flushes it to its file system (a
/// FUSE file system the peer serves may never answer the flush); a device, whose driver may wait (a terminal drains
/// its output for up to 30 s). Asks nothing of any file system.
int csocketipc_close_may_wait(int descriptor);

/// The type bits of st_mode (S_IFMT) and the size of `descriptor`, from what the kernel has cached
/// (statx with AT_STATX_DONT_SYNC): no request reaches the file's file system, such as a FUSE file system served by a
/// peer that never answers, which a plain fstat(2) may wait for. 0, or -1 with errno.
int csocketipc_cached_type_and_size(int descriptor, unsigned int *type, long long *size);

/// Adds every seal a receiver of shared memory needs (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_SEAL):
/// 0, or -1 with errno.
int csocketipc_seal_all(int descriptor);

/// Whether `descriptor` carries all four seals of csocketipc_seal_all: 1 if so, 0 if not (or it is not a memfd).
int csocketipc_is_sealed(int descriptor);

/// Bytes the peer of `descriptor`, a connected Unix-domain stream socket, holds in its receive queue and has not read,
/// counting a buffer it read part of by what is left of it (the kernel's unix_inq_len, as SIOCINQ on the peer's own
/// socket): asked of sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG_PEER then UNIX_DIAG_RQLEN, as `ss -x` shows Recv-Q),
/// which needs no privilege. -1 if it cannot be told (no unix_diag in the kernel, no peer, an error).
long csocketipc_unix_peer_unread(int descriptor);
#endif

#endif
