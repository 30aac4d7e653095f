/* memlat: the latency of one dependent memory read, by working-set size.
 *
 * A random cyclic permutation of 64-byte cells is walked pointer by pointer (each read depends on the
 * previous one, so nothing overlaps): the time per step is the latency of the level of the memory
 * hierarchy that holds a working set of that size. The buffer is advised onto huge pages where the
 * system has them, as keycard's heap is at a million bindings, so the figures are cache, not TLB, misses.
 *
 *     cc -O2 -o memlat memlat.c && ./memlat [max MiB]      prints "<KiB> <ns per read>" per line
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t max_mib = argc > 1 ? (size_t)atol(argv[1]) : 512;
    for (size_t kib = 256; kib <= max_mib * 1024; kib *= 2) {
        size_t n = kib * 1024 / 64, bytes = n * 64;
        uint64_t *a = NULL;
        if (posix_memalign((void **)&a, 2u << 20, bytes) != 0) return 1;
#ifdef MADV_HUGEPAGE
        madvise(a, bytes, MADV_HUGEPAGE);
#endif
        size_t *perm = malloc(n * sizeof *perm);
        if (perm == NULL) return 1;
        for (size_t i = 0; i < n; i++) perm[i] = i;
        for (size_t i = n - 1; i > 0; i--) {
            size_t j = next() % (i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (size_t i = 0; i < n; i++) a[perm[i] * 8] = perm[(i + 1) % n] * 8;
        free(perm);
        uint64_t p = 0;
        for (size_t i = 0; i < n; i++) p = a[p];          /* warm: fault the pages in, fill the caches */
        long steps = 4000000;
        double t0 = now();
        for (long i = 0; i < steps; i++) p = a[p];
        double ns = (now() - t0) * 1e9 / steps;
        printf("%zu %.1f %d\n", kib, ns, (int)(p & 1));   /* p printed so the walk is not optimized out */
        free(a);
    }
    return 0;
}
