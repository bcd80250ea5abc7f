#ifndef CSOCKETIPC_TEST_SUPPORT_H
#define CSOCKETIPC_TEST_SUPPORT_H

/// connect(2) of `socket` to the Unix-domain socket at `path` with the calling thread's effective user id set to
/// `uid` for the call (Linux, as root): the peer's SO_PEERCRED then reports `uid`, while the file permissions are still
/// root's (the filesystem uid stays 0). Only the calling thread's credentials change, with the raw system calls
/// (glibc's wrappers change every thread's), and they are put back before it returns. Returns connect's result, with
/// errno; -1 with errno also when the credentials cannot be changed.
int csocketipc_test_connect_as(int socket, const char *path, unsigned int uid);

#endif
