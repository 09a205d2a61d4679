/* wflow's aligned-reuse shim: posix_memalign that reuses a freed buffer's own hole.
 *
 * XLA on CPU asks for every buffer with posix_memalign(64). glibc before 2.38 serves an
 * aligned request of S bytes by taking a chunk of S + alignment + 32 bytes, splitting off
 * and freeing the pieces before and after the aligned buffer. When the buffer is freed, its
 * hole (S bytes, or S plus the piece before it, which merges back) is too small for the
 * next request of the same size: every call of a compiled program takes fresh memory from
 * the top of the heap, which the kernel zero-fills page by page.
 *
 * For large requests this posix_memalign asks malloc for S bytes first. A hole left by an
 * earlier aligned buffer of that size starts at the buffer's (aligned) address, provided
 * the piece before it did not merge back (keep_lead), so malloc returns it aligned; a
 * misaligned result is freed and the request goes to the C library's posix_memalign
 * unchanged. Either way the buffer is an ordinary malloc chunk (free, realloc and
 * malloc_usable_size work as before).
 *
 * Loaded with LD_PRELOAD by the wflow command (_wflow_entry.preload_aligned_reuse), which
 * compiles this file once per machine with the system C compiler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define WFLOW_REUSE_MIN ((size_t)1 << 20) /* smaller requests go straight to the C library */

typedef int (*memalign_fn)(void **, size_t, size_t);

static memalign_fn next_posix_memalign;
static unsigned long long reused, passed_on;

__attribute__((constructor)) static void wflow_aligned_reuse_init(void) {
    next_posix_memalign = (memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
}

/* glibc carves an aligned buffer out of a larger chunk and frees the piece before it (a
 * chunk of 32-80 bytes) to its small-chunk lists. A later large request merges those lists'
 * chunks with their free neighbours, so the buffer's hole, once freed, would start at the
 * piece, below the aligned address, and malloc would return it misaligned. So the piece is
 * taken and kept (at most 80 bytes per fresh large buffer): small requests of its size are
 * served last in, first out, from a per-thread cache of at most 7 chunks and then from the
 * list that holds the piece; it is recognised by its address, right below the buffer, and
 * every other chunk taken on the way is given back. */
#define WFLOW_TRIES 16

static void keep_lead(void *buffer) {
    for (size_t lead = 32; lead <= 80; lead += 16) {
        void *taken[WFLOW_TRIES];
        int n = 0, found = 0;
        while (n < WFLOW_TRIES) {
            char *piece = malloc(lead - 16);
            if (piece == NULL)
                break;
            if (piece == (char *)buffer - lead) {
                found = 1;
                break;
            }
            taken[n++] = piece;
        }
        while (n > 0)
            free(taken[--n]);
        if (found)
            return;
    }
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    memalign_fn next = __atomic_load_n(&next_posix_memalign, __ATOMIC_ACQUIRE);
    if (next == NULL) { /* called before the constructor ran (another library's constructor) */
        next = (memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
        if (next == NULL)
            return ENOMEM;
        __atomic_store_n(&next_posix_memalign, next, __ATOMIC_RELEASE);
    }
    int power_of_two = alignment != 0 && (alignment & (alignment - 1)) == 0;
    if (power_of_two && alignment % sizeof(void *) == 0 && size >= WFLOW_REUSE_MIN) {
        void *p = malloc(size);
        if (p != NULL && ((uintptr_t)p & (alignment - 1)) == 0) {
            __atomic_add_fetch(&reused, 1, __ATOMIC_RELAXED);
            *out = p;
            return 0;
        }
        free(p);
    }
    __atomic_add_fetch(&passed_on, 1, __ATOMIC_RELAXED);
    int err = next(out, alignment, size);
    if (err == 0 && size >= WFLOW_REUSE_MIN)
        keep_lead(*out);
    return err;
}

/* How many requests were served by malloc (reused) and how many went on to the C library
 * (passed_on, small requests included): for tests and benchmarks, through ctypes. */
void wflow_aligned_reuse_counts(unsigned long long *out_reused, unsigned long long *out_passed) {
    *out_reused = __atomic_load_n(&reused, __ATOMIC_RELAXED);
    *out_passed = __atomic_load_n(&passed_on, __ATOMIC_RELAXED);
}
