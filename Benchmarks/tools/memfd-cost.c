// What one shared payload's memory costs on this machine, without sockets: each step SocketIPC's shared payloads
// take, timed alone in one process, per payload of SIZE bytes (default 1 MiB), as a JSON line per step.
//
//   cc -O2 -o /tmp/memfd-cost Benchmarks/tools/memfd-cost.c && /tmp/memfd-cost [SIZE] [N]
//
// Steps (microseconds per payload, median of 5 rounds of N payloads, default 1000):
//   memcpy            copying SIZE bytes between two buffers of the process's own, already touched: the floor
//   fresh-memory      memfd_create + fallocate + close: the kernel allocates, zeroes and frees the pages
//   copy-in           memfd_create + pwrite of the bytes + the four seals + close (ConnectionOptions.sharedPayloadThreshold)
//   loan              memfd_create + ftruncate + mmap + memcpy into the mapping + munmap + seals + close
//                     (SharedMemoryLoan filled by a copy)
//   copy-in+copy-out  copy-in, then mmap read-only + memcpy out + munmap (a receiver's ordinary buffer)
//   copy-in+mapped    copy-in, then mmap read-only and munmap without reading (a receiver's MappedPayload)
//   fresh-anonymous   mmap of private anonymous memory + memset + munmap: whether fresh pages cost as much without
//                     shared memory (they do on a VM whose page faults are slow)
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif

static size_t size = 1 << 20;
static char *source, *target;

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int fresh(void) {
    int fd = memfd_create("memfd-cost", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    return fd;
}

static void seal(int fd) {
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) die("F_ADD_SEALS");
}

static int copy_in(void) {
    int fd = fresh();
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(fd, source + done, size - done, (off_t)done);
        if (n < 0) die("pwrite");
        done += (size_t)n;
    }
    seal(fd);
    return fd;
}

static void receive(int fd, int copy_out) {
    char *mapping = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (mapping == MAP_FAILED) die("mmap");
    if (copy_out) memcpy(target, mapping, size);
    munmap(mapping, size);
}

static void step(int which) {
    int fd;
    switch (which) {
    case 0: memcpy(target, source, size); __asm__ volatile("" ::"r"(target) : "memory"); return;
    case 1:
        fd = fresh();
        if (fallocate(fd, 0, 0, (off_t)size) < 0) die("fallocate");
        break;
    case 2: fd = copy_in(); break;
    case 3: {
        fd = fresh();
        if (ftruncate(fd, (off_t)size) < 0) die("ftruncate");
        char *mapping = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (mapping == MAP_FAILED) die("mmap");
        memcpy(mapping, source, size);
        munmap(mapping, size);
        seal(fd);
        break;
    }
    case 4: fd = copy_in(); receive(fd, 1); break;
    case 5: fd = copy_in(); receive(fd, 0); break;
    default: {
        char *anonymous = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (anonymous == MAP_FAILED) die("mmap");
        memset(anonymous, 'x', size);
        munmap(anonymous, size);
        return;
    }
    }
    close(fd);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    static const char *names[] = {"memcpy", "fresh-memory", "copy-in", "loan", "copy-in+copy-out", "copy-in+mapped",
                                  "fresh-anonymous"};
    long n = 1000;
    if (argc > 1) size = (size_t)strtoul(argv[1], NULL, 10);
    if (argc > 2) n = strtol(argv[2], NULL, 10);
    if (size == 0 || n <= 0) {
        fprintf(stderr, "usage: memfd-cost [SIZE > 0] [N > 0]\n");
        return 2;
    }
    source = malloc(size);
    target = malloc(size);
    if (!source || !target) die("malloc");
    memset(source, 'x', size);
    memset(target, 0, size);
    for (int which = 0; which < 7; which++) {
        double rounds[5];
        for (int round = 0; round < 5; round++) {
            double start = now_us();
            for (long i = 0; i < n; i++) step(which);
            rounds[round] = (now_us() - start) / (double)n;
        }
        qsort(rounds, 5, sizeof rounds[0], compare);
        printf("{\"step\":\"%s\",\"size\":%zu,\"n\":%ld,\"us_per_payload\":%.1f,\"gib_per_s\":%.3f}\n", names[which],
               size, n, rounds[2], (double)size / (rounds[2] / 1e6) / (1 << 30));
    }
    return 0;
}
