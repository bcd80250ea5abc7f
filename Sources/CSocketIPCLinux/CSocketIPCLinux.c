// Headers only: see include/CSocketIPCLinux.h.
