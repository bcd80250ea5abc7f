#define _GNU_SOURCE
#include "CSocketIPCTestSupport.h"

#include <errno.h>
#ifdef __linux__
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#endif

int csocketipc_test_connect_as(int socket, const char *path, unsigned int uid) {
#ifdef __linux__
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(address.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(address.sun_path, path);
    // A change of credentials clears the process's dumpable flag (commit_creds): put back as it was afterwards, or the
    // rest of the test run could not be debugged or dump core.
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    if (syscall(SYS_setresuid, -1, (long)uid, -1) != 0) return -1;
    // Back to filesystem uid 0 (the real uid), which also brings back the file capabilities: permissions as root.
    syscall(SYS_setfsuid, 0L);
    int result = connect(socket, (struct sockaddr *)&address, sizeof(address));
    int saved = errno;
    // Root again, or this thread must not go on: it would act for another user.
    if (syscall(SYS_setresuid, -1, 0L, -1) != 0) abort();
    if (dumpable >= 0) prctl(PR_SET_DUMPABLE, (unsigned long)dumpable, 0, 0, 0);
    errno = saved;
    return result;
#else
    (void)socket;
    (void)path;
    (void)uid;
    errno = ENOSYS;
    return -1;
#endif
}
