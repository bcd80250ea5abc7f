// Counts calls to malloc, calloc, realloc and posix_memalign/aligned_alloc in a process, and prints the total to
// stderr at exit: `LD_PRELOAD=./malloc-count.so COMMAND`. Used by allocations.sh to measure allocations per message.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_long allocations;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

// dlsym may itself call calloc before real_calloc is known: serve it from a small static arena.
static char arena[4096];
static size_t arena_used;

static void init(void) {
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
}

void *malloc(size_t size) {
    if (!real_malloc) init();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_malloc(size);
}

void *calloc(size_t count, size_t size) {
    if (!real_calloc) {
        size_t bytes = (count * size + 15) & ~(size_t)15;
        if (arena_used + bytes <= sizeof arena) {
            void *pointer = arena + arena_used;
            arena_used += bytes;
            return pointer;
        }
        init();
    }
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    if (!real_realloc) init();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_realloc(pointer, size);
}

int posix_memalign(void **pointer, size_t alignment, size_t size) {
    if (!real_posix_memalign) init();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_posix_memalign(pointer, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (!real_aligned_alloc) init();
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    return real_aligned_alloc(alignment, size);
}

void free(void *pointer) {
    static void (*real_free)(void *);
    if ((char *)pointer >= arena && (char *)pointer < arena + sizeof arena) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(pointer);
}

__attribute__((destructor)) static void report(void) {
    char line[96];
    int length = snprintf(line, sizeof line, "allocations: %ld\n", atomic_load(&allocations));
    if (length > 0) write(2, line, (size_t)length);
}
