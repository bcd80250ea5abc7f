// The floor of a small round trip on this machine, without SocketIPC: two processes exchange 64-byte messages over a
// Unix stream socketpair, one at a time, as W2 does, and print a JSON line per mode.
//
//   cc -O2 -o /tmp/polled-round-trip Benchmarks/tools/polled-round-trip.c && /tmp/polled-round-trip [N]
//
// Modes (N round trips each, default 100000, after N/10 for warm-up):
//   polled    each side spins on recv(MSG_DONTWAIT) until its message is there: no thread ever sleeps, so a round
//             trip is two sends and two successful receives (plus the receives that found nothing). The least that a
//             latency mode, which polls instead of sleeping, can reach here.
//   epoll     as polled, but with the system calls of SocketIPC's latency mode on SwiftNIO: each side spins on
//             epoll_wait(timeout 0) over an epoll set of its own until the socket is readable, then waits on a second
//             epoll set (the event loop's, which returns at once), reads and sends: the cost of those calls alone,
//             without Swift.
//   blocking  each side sleeps in recv: a round trip includes two thread wake-ups (the shared harness's c reference
//             does the same).
// Output: ops_per_s, and p50_us and p99_us of the round trips, measured by the sender with CLOCK_MONOTONIC.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { MESSAGE = 64 };

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum Mode { POLLED, EPOLL, BLOCKING };

static int epoll_set(int fd) {
    int set = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    if (set < 0 || epoll_ctl(set, EPOLL_CTL_ADD, fd, &event) != 0) {
        perror("epoll");
        exit(1);
    }
    return set;
}

// Reads one whole message; returns 0 at end of stream. In EPOLL mode, `spin` and `loop` are the two epoll sets.
static int receive(int fd, char *buffer, enum Mode mode, int spin, int loop) {
    int polled = mode != BLOCKING;
    if (mode == EPOLL) {
        struct epoll_event event;
        while (epoll_wait(spin, &event, 1, 0) == 0) {}
        if (epoll_wait(loop, &event, 1, -1) < 0) {
            perror("epoll_wait");
            exit(1);
        }
    }
    int got = 0;
    while (got < MESSAGE) {
        ssize_t n = recv(fd, buffer + got, MESSAGE - got, polled ? MSG_DONTWAIT : 0);
        if (n > 0) {
            got += (int)n;
        } else if (n == 0) {
            return 0;
        } else if (errno != EAGAIN && errno != EINTR) {
            perror("recv");
            exit(1);
        }
    }
    return 1;
}

static void send_all(int fd, const char *buffer) {
    if (send(fd, buffer, MESSAGE, MSG_NOSIGNAL) != MESSAGE) {
        perror("send");
        exit(1);
    }
}

static void run(const char *name, enum Mode mode, int n) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        perror("socketpair");
        exit(1);
    }
    char buffer[MESSAGE] = {0};
    pid_t echo = fork();
    if (echo == 0) {
        close(pair[0]);
        int spin = mode == EPOLL ? epoll_set(pair[1]) : -1, loop = mode == EPOLL ? epoll_set(pair[1]) : -1;
        while (receive(pair[1], buffer, mode, spin, loop)) send_all(pair[1], buffer);
        _exit(0);
    }
    close(pair[1]);
    int spin = mode == EPOLL ? epoll_set(pair[0]) : -1, loop = mode == EPOLL ? epoll_set(pair[0]) : -1;
    int warmup = n / 10;
    double *samples = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < warmup; i++) {
        send_all(pair[0], buffer);
        receive(pair[0], buffer, mode, spin, loop);
    }
    double start = now_ns();
    for (int i = 0; i < n; i++) {
        double sent = now_ns();
        send_all(pair[0], buffer);
        receive(pair[0], buffer, mode, spin, loop);
        samples[i] = now_ns() - sent;
    }
    double elapsed = now_ns() - start;
    close(pair[0]);
    if (mode == EPOLL) {
        close(spin);
        close(loop);
    }
    waitpid(echo, NULL, 0);
    qsort(samples, (size_t)n, sizeof(double), compare);
    printf("{\"mode\":\"%s\",\"n\":%d,\"ops_per_s\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f}\n", name, n,
           n / (elapsed / 1e9), samples[n / 2] / 1e3, samples[(long)n * 99 / 100] / 1e3);
    free(samples);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100000;
    if (n < 10) n = 10;
    run("polled", POLLED, n);
    run("epoll", EPOLL, n);
    run("blocking", BLOCKING, n / 4 < 10 ? 10 : n / 4);
    return 0;
}
