// The definitions of include/CSocketIPCLinux.h.

#define _GNU_SOURCE

#if defined(__linux__)
#include "CSocketIPCLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

/// Control-message room for a security label (SCM_SECURITY, which a socket with SO_PASSSEC gets with each message):
/// SELinux contexts such as `unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023` take 54 bytes; 512 with slack.
#define CSOCKETIPC_SECURITY_LABEL_ROOM CMSG_SPACE(512)

// SCM_PIDFD, the control message SO_PASSPIDFD adds (include/linux/socket.h, Linux 6.5 and later).
#define CSOCKETIPC_SCM_PIDFD 0x04

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/// In the child of csocketipc_spawn_killed_with_parent: makes `descriptor` the child's `target`, open across exec.
static int csocketipc_move_descriptor(int descriptor, int target) {
    if (descriptor == target) {
        int flags = fcntl(descriptor, F_GETFD);
        return flags < 0 ? -1 : fcntl(descriptor, F_SETFD, flags & ~FD_CLOEXEC);
    }
    return dup2(descriptor, target) < 0 ? -1 : 0;
}

int csocketipc_spawn_killed_with_parent(
    const char *path, char *const arguments[], char *const environment[], int input, int output, int error,
    long long descriptor_soft_limit) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t parent = getpid();
    // Every signal blocked across fork, so that no handler of this process runs in the child before its dispositions
    // are the defaults.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t child = fork();
    if (child == 0) {
        // The child of a multithreaded process: async-signal-safe calls only, until exec.
        struct sigaction defaults;
        memset(&defaults, 0, sizeof defaults);
        defaults.sa_handler = SIG_DFL;
        for (int signal = 1; signal < NSIG; signal++) (void)sigaction(signal, &defaults, NULL);
        int code = 0;
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) code = errno;
        // The parent may have died before the line above: then nobody would kill this child.
        if (code == 0 && getppid() != parent) code = ESRCH;
        if (code == 0 && setpgid(0, 0) != 0) code = errno;
        if (code == 0 && (csocketipc_move_descriptor(input, 0) != 0 || csocketipc_move_descriptor(output, 1) != 0
                             || csocketipc_move_descriptor(error, 2) != 0))
            code = errno;
        if (code == 0 && descriptor_soft_limit >= 0) {
            // Only ever lowered: the hard limit, and a soft limit already lower, are left as they are.
            struct rlimit limit;
            if (getrlimit(RLIMIT_NOFILE, &limit) != 0) code = errno;
            else if (limit.rlim_cur > (rlim_t)descriptor_soft_limit) {
                limit.rlim_cur = (rlim_t)descriptor_soft_limit;
                if (setrlimit(RLIMIT_NOFILE, &limit) != 0) code = errno;
            }
        }
        if (code == 0) {
            // Every other descriptor closes on exec, also one opened without O_CLOEXEC (Linux 5.11; before, those
            // the process opens are close-on-exec already).
            (void)syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            execve(path, arguments, environment);
            code = errno;
        }
        ssize_t ignored = write(report[1], &code, sizeof code);
        (void)ignored;
        _exit(127);
    }
    int forkError = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    if (child < 0) {
        close(report[0]);
        errno = forkError;
        return -1;
    }
    // The report pipe closes at exec (O_CLOEXEC): no bytes means the program runs.
    int code = 0;
    ssize_t count;
    do {
        count = read(report[0], &code, sizeof code);
    } while (count < 0 && errno == EINTR);
    close(report[0]);
    if (count == (ssize_t)sizeof code) {
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        errno = code;
        return -1;
    }
    return child;
}

int csocketipc_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, (void *)0, 0u);
}

/// csocketipc_receive_with_descriptors with the kernel given `room` bytes of the control buffer (at most its size).
static long receive_with_control_room(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated,
    int flags, size_t room);

long csocketipc_receive_with_descriptors(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated,
    int flags) {
    return receive_with_control_room(socket, bytes, length, descriptors, maximum, count, truncated, flags, (size_t)-1);
}

long csocketipc_peek_with_descriptors(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated) {
    if (maximum < 0) maximum = 0;
    if (maximum > CSOCKETIPC_MAX_DESCRIPTORS) maximum = CSOCKETIPC_MAX_DESCRIPTORS;
    // Room for `maximum` descriptors, the credentials, a pidfd and a security label (a listener with PassSecurity=
    // gets one with each message, an honest peer's too): a peek copies about that many descriptors into this
    // process, and those it copies beyond `maximum` (into room left by what did not come) are closed at once.
    size_t room = CMSG_SPACE(sizeof(int) * (size_t)maximum) + CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int))
        + CSOCKETIPC_SECURITY_LABEL_ROOM;
    return receive_with_control_room(
        socket, bytes, length, descriptors, maximum, count, truncated, MSG_PEEK | MSG_DONTWAIT, room);
}

static long receive_with_control_room(
    int socket, void *bytes, unsigned long length, int *descriptors, int maximum, int *count, int *truncated,
    int flags, size_t room) {
    // Room for every descriptor one sendmsg can carry (SCM_MAX_FD), and for the credentials and pidfd a socket with
    // SO_PASSCRED or SO_PASSPIDFD gets with each message (inherited from a listener, as systemd's PassCredentials=
    // sets it): the kernel then never drops a passed descriptor itself. It would release what it drops on this
    // thread, and the last close of a lingering socket among them would hold it (found by a review of a buffer sized
    // to the caller's maximum); and credentials that did not fit would cut the descriptors of honest peers.
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * CSOCKETIPC_MAX_DESCRIPTORS) + CMSG_SPACE(sizeof(struct ucred))
            + CMSG_SPACE(sizeof(int)) + CSOCKETIPC_SECURITY_LABEL_ROOM];
    } control;
    struct iovec vector = {.iov_base = bytes, .iov_len = length};
    struct msghdr message;
    *count = 0;
    *truncated = 0;
    if (maximum > CSOCKETIPC_MAX_DESCRIPTORS) maximum = CSOCKETIPC_MAX_DESCRIPTORS;
    ssize_t received;
    do {
        memset(&message, 0, sizeof(message));
        message.msg_iov = &vector;
        message.msg_iovlen = 1;
        message.msg_control = control.space;
        message.msg_controllen = room < sizeof(control.space) ? room : sizeof(control.space);
        received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC | flags);
    } while (received < 0 && errno == EINTR);
    if (received < 0) return -1;
    // The buffer holds all a recvmsg(2) can bring (SCM_MAX_FD descriptors, which one sendmsg carries at most and one
    // recvmsg never gathers from two, credentials, a pidfd), so the kernel cut the control data because this process
    // could not take what came (out of descriptors, RLIMIT_NOFILE; or a security module refused them), not because the
    // peer sent more than fits: 2, this side's shortage, which is not the peer's fault (as systemd reads it since
    // #42043). (A test of the room left got it wrong with credentials and a pidfd beside 249 or more descriptors,
    // found by a review.) Control data of another kind, below, is the peer's: 1.
    if (message.msg_flags & MSG_CTRUNC) *truncated = 2;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
            size_t n = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *passed = (int *)CMSG_DATA(header);
            for (size_t i = 0; i < n; i++) {
                int descriptor;
                memcpy(&descriptor, passed + i, sizeof(int));
                if (*count < maximum) {
                    descriptors[(*count)++] = descriptor;
                } else {
                    // More than the caller has room for: never leak one. (A peek's caller learns that descriptors
                    // came, 2: it refuses them whatever their number.)
                    close(descriptor);
                    *truncated = (flags & MSG_PEEK) ? 2 : 1;
                }
            }
        } else if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == CSOCKETIPC_SCM_PIDFD
                   && header->cmsg_len >= CMSG_LEN(sizeof(int))) {
            // The sender's pidfd, which SO_PASSPIDFD asks for: the kernel's, not the peer's, and its close never waits.
            int pidfd;
            memcpy(&pidfd, CMSG_DATA(header), sizeof(int));
            if (pidfd >= 0) close(pidfd);
        } else if (!(header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_CREDENTIALS)) {
            *truncated = 1;
        }
    }
    return (long)received;
}

long csocketipc_send_with_descriptors(
    int socket, const void *bytes, unsigned long length, const int *descriptors, int count) {
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * CSOCKETIPC_MAX_DESCRIPTORS)];
    } control;
    if (count < 0 || count > CSOCKETIPC_MAX_DESCRIPTORS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec vector = {.iov_base = (void *)bytes, .iov_len = length};
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    memset(&control, 0, sizeof(control));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (count > 0) {
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(header), descriptors, sizeof(int) * count);
    }
    ssize_t sent;
    do {
        sent = sendmsg(socket, &message, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return (long)sent;
}

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef SYS_memfd_create
#define SYS_memfd_create 319
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif

#define CSOCKETIPC_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

int csocketipc_accept_nonblocking_cloexec(int descriptor) {
    return accept4(descriptor, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

int csocketipc_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

#ifndef SO_PASSRIGHTS
// include/uapi/asm-generic/socket.h since Linux 6.16 ("af_unix: Introduce SO_PASSRIGHTS"); the
// architectures with their own numbering (alpha, mips, parisc, sparc) are not targets.
#define SO_PASSRIGHTS 83
#endif

const short csocketipc_pollrdhup = POLLRDHUP;

int csocketipc_set_pass_rights(int socket, int on) {
    return setsockopt(socket, SOL_SOCKET, SO_PASSRIGHTS, &on, sizeof(on));
}

int csocketipc_close_passed(int descriptor) {
    struct linger current = {0, 0};
    socklen_t length = sizeof(current);
    // Fails with ENOTSOCK for what is not a socket. Changed only when a close could wait (on, with a time): the
    // setting belongs to the socket, which other holders share.
    if (getsockopt(descriptor, SOL_SOCKET, SO_LINGER, &current, &length) == 0 && current.l_onoff != 0
        && current.l_linger > 0) {
        struct linger off = {0, 0};
        (void)setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &off, sizeof(off));
    }
    return close(descriptor);
}

int csocketipc_close_may_wait(int descriptor) {
    if (fcntl(descriptor, F_GET_SEALS) >= 0 || fcntl(descriptor, F_GETPIPE_SZ) >= 0) return 0;
    int domain = 0;
    socklen_t length = sizeof(domain);
    if (getsockopt(descriptor, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0) {
        if (domain == AF_UNIX) return 2;
        // Another socket: its close waits only with SO_LINGER on and a time (which csocketipc_close_passed turns off
        // on a passed one, but which this side's own duplicate keeps).
        struct linger linger;
        socklen_t lingerLength = sizeof(linger);
        if (getsockopt(descriptor, SOL_SOCKET, SO_LINGER, &linger, &lingerLength) == 0 && linger.l_onoff
            && linger.l_linger > 0) {
            return 1;
        }
        return 0;
    }
    return 1;
}

int csocketipc_cached_type_and_size(int descriptor, unsigned int *type, long long *size) {
    struct statx status;
    if (statx(descriptor, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_SIZE, &status) != 0) return -1;
    *type = status.stx_mode & S_IFMT;
    *size = (long long)status.stx_size;
    return 0;
}

int csocketipc_pipe_cloexec(int ends[2]) {
    return pipe2(ends, O_CLOEXEC);
}

#define CSOCKETIPC_KEPT_BLOCK_MINIMUM (256 * 1024)
#define CSOCKETIPC_KEPT_BLOCKS 4

struct csocketipc_kept_blocks {
    void *blocks[CSOCKETIPC_KEPT_BLOCKS];
    size_t sizes[CSOCKETIPC_KEPT_BLOCKS];
    int count;
};

static __thread struct csocketipc_kept_blocks csocketipc_kept;
static pthread_key_t csocketipc_kept_key;
static pthread_once_t csocketipc_kept_once = PTHREAD_ONCE_INIT;

static void csocketipc_free_kept(void *unused) {
    (void)unused;
    for (int i = 0; i < csocketipc_kept.count; i++) free(csocketipc_kept.blocks[i]);
    csocketipc_kept.count = 0;
}

static void csocketipc_make_kept_key(void) { (void)pthread_key_create(&csocketipc_kept_key, csocketipc_free_kept); }

void *csocketipc_read_buffer_allocate(size_t size) {
    if (size >= CSOCKETIPC_KEPT_BLOCK_MINIMUM) {
        struct csocketipc_kept_blocks *kept = &csocketipc_kept;
        for (int i = 0; i < kept->count; i++) {
            if (kept->sizes[i] >= size) {
                void *block = kept->blocks[i];
                kept->count -= 1;
                kept->blocks[i] = kept->blocks[kept->count];
                kept->sizes[i] = kept->sizes[kept->count];
                return block;
            }
        }
    }
    return malloc(size);
}

void *csocketipc_read_buffer_reallocate(void *pointer, size_t old_size, size_t new_size) {
    (void)old_size;
    return realloc(pointer, new_size);
}

void csocketipc_read_buffer_free(void *pointer) {
    size_t size = malloc_usable_size(pointer);
    struct csocketipc_kept_blocks *kept = &csocketipc_kept;
    if (size >= CSOCKETIPC_KEPT_BLOCK_MINIMUM && kept->count < CSOCKETIPC_KEPT_BLOCKS) {
        // The key's destructor frees what the thread keeps when it ends; it runs only for a non-NULL value.
        (void)pthread_once(&csocketipc_kept_once, csocketipc_make_kept_key);
        if (kept->count == 0) (void)pthread_setspecific(csocketipc_kept_key, (void *)1);
        kept->blocks[kept->count] = pointer;
        kept->sizes[kept->count] = size;
        kept->count += 1;
        return;
    }
    free(pointer);
}

int csocketipc_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int csocketipc_seal_all(int descriptor) {
    return fcntl(descriptor, F_ADD_SEALS, CSOCKETIPC_SEALS);
}

int csocketipc_is_sealed(int descriptor) {
    int seals = fcntl(descriptor, F_GET_SEALS);
    return seals >= 0 && (seals & CSOCKETIPC_SEALS) == CSOCKETIPC_SEALS;
}

/// Asks sock_diag about the Unix-domain socket of inode `inode` over the netlink socket `netlink`, with `show`
/// (UDIAG_SHOW_*): its peer's inode and its receive queue's unread bytes, where asked for. 0 on success.
static int csocketipc_unix_diag(int netlink, uint32_t inode, uint32_t show, uint32_t *peer, uint32_t *unread) {
    struct {
        struct nlmsghdr header;
        struct unix_diag_req request;
    } message;
    memset(&message, 0, sizeof(message));
    message.header.nlmsg_len = sizeof(message);
    message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    message.header.nlmsg_flags = NLM_F_REQUEST;
    message.header.nlmsg_seq = inode;
    message.request.sdiag_family = AF_UNIX;
    message.request.udiag_states = ~0U;
    message.request.udiag_ino = inode;
    message.request.udiag_show = show;
    message.request.udiag_cookie[0] = ~0U;
    message.request.udiag_cookie[1] = ~0U;
    struct sockaddr_nl kernel;
    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    if (sendto(netlink, &message, sizeof(message), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) return -1;
    long buffer[1024];
    ssize_t length = recv(netlink, buffer, sizeof(buffer), 0);
    if (length < 0) return -1;
    struct nlmsghdr *header = (struct nlmsghdr *)buffer;
    if (!NLMSG_OK(header, (size_t)length) || header->nlmsg_type != SOCK_DIAG_BY_FAMILY) return -1;
    struct unix_diag_msg *answer = NLMSG_DATA(header);
    if (header->nlmsg_len < NLMSG_LENGTH(sizeof(*answer))) return -1;
    int found = 0;
    struct rtattr *attribute = (struct rtattr *)(answer + 1);
    int left = (int)(header->nlmsg_len - NLMSG_LENGTH(sizeof(*answer)));
    for (; RTA_OK(attribute, left); attribute = RTA_NEXT(attribute, left)) {
        if (attribute->rta_type == UNIX_DIAG_PEER && peer != NULL && RTA_PAYLOAD(attribute) >= sizeof(uint32_t)) {
            memcpy(peer, RTA_DATA(attribute), sizeof(uint32_t));
            found |= 1;
        } else if (attribute->rta_type == UNIX_DIAG_RQLEN && unread != NULL
                   && RTA_PAYLOAD(attribute) >= sizeof(struct unix_diag_rqlen)) {
            struct unix_diag_rqlen queue;
            memcpy(&queue, RTA_DATA(attribute), sizeof(queue));
            *unread = queue.udiag_rqueue;
            found |= 2;
        }
    }
    uint32_t wanted = (peer != NULL ? 1 : 0) | (unread != NULL ? 2 : 0);
    return (found & wanted) == wanted ? 0 : -1;
}

long csocketipc_unix_peer_unread(int descriptor) {
    struct stat status;
    if (fstat(descriptor, &status) != 0 || !S_ISSOCK(status.st_mode)) return -1;
    int netlink = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (netlink < 0) return -1;
    uint32_t peer = 0;
    uint32_t unread = 0;
    long result = -1;
    uint32_t peersPeer = 0;
    // The second answer must name this socket as its peer: inode numbers wrap, and a lookup by number alone could
    // find another socket (found by a review).
    if (csocketipc_unix_diag(netlink, (uint32_t)status.st_ino, UDIAG_SHOW_PEER, &peer, NULL) == 0 && peer != 0
        && csocketipc_unix_diag(netlink, peer, UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN, &peersPeer, &unread) == 0
        && peersPeer == (uint32_t)status.st_ino) {
        result = (long)unread;
    }
    close(netlink);
    return result;
}
#endif
