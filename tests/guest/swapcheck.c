//! swapcheck: the guest-kernel tests' workload (tests/all/kernel_swap.rs). It writes and
//! re-reads verified data larger than the guest's RAM, so the kernel must swap it out and in.
//!
//!   swapcheck MIB [PASSES [corrupt=PAGE]]     (compiled at test time: gcc -static -O2)
//!
//! Allocates MIB MiB in 4 MiB chunks. Pass 0 writes every 4 KiB page with a pattern derived from
//! (page index, pass); each later pass verifies every page against the previous pass's pattern
//! and rewrites it with its own; a final sweep verifies the last pass. So every page is written
//! PASSES times and verified PASSES times. A page is 64 blocks of 64 bytes, each naming the page,
//! the pass and the block: a page from elsewhere, a stale page, a zero page or a misplaced sector
//! never verifies; the repetition keeps pages compressible (as real anonymous memory mostly is).
//! `corrupt=PAGE` flips one byte of that page after the first pass: the harness's own test that
//! a bad page is reported.
//!
//! Marker lines (stdout), which the test on the outside parses:
//!   SWAPCHECK START mib=M pages=N passes=P memtotal_kib=K
//!   SWAPCHECK PROGRESS pass=I mib=M seconds=S pswpin=A pswpout=B   (every 64 MiB of a pass)
//!   SWAPCHECK PASS n=I seconds=S pswpin=A pswpout=B        (cumulative /proc/vmstat deltas)
//!   SWAPCHECK FAIL page=N pass=P block=B word=W expected=X got=Y   (the first few mismatches)
//!   SWAPCHECK OK pages=N verified=V passes=P seconds=S pswpin=A pswpout=B memtotal_kib=K
//!   SWAPCHECK FAIL failures=F pages=N verified=V           (and exit status 1)

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define CHUNK_PAGES 1024 /* 4 MiB */
#define MAX_REPORTED 10
#define PROGRESS_PAGES (64 * 256) /* a progress line every 64 MiB */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A value from /proc/vmstat or /proc/meminfo ("name value" or "name: value kB"), or -1. */
static long proc_value(const char *file, const char *name) {
    FILE *f = fopen(file, "r");
    char key[64];
    long value;
    long found = -1;
    if (!f) return -1;
    while (fscanf(f, "%63s %ld%*[^\n]", key, &value) == 2) {
        size_t n = strlen(key);
        if (n > 0 && key[n - 1] == ':') key[n - 1] = '\0';
        if (strcmp(key, name) == 0) {
            found = value;
            break;
        }
    }
    fclose(f);
    return found;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* The page's contents for (page, pass). */
static void pattern(uint64_t *words, uint64_t page, uint64_t pass) {
    uint64_t base = mix(page * 1000003 + pass);
    for (int block = 0; block < WORDS / 8; block++) {
        uint64_t *w = words + block * 8;
        w[0] = 0x5357415043484b21ULL; /* "SWAPCHK!" */
        w[1] = page;
        w[2] = pass;
        w[3] = block;
        w[4] = base;
        w[5] = ~page;
        w[6] = base ^ (uint64_t)block;
        w[7] = page ^ (pass << 48) ^ ((uint64_t)block << 40);
    }
}

static uint64_t **chunks;
static size_t pages;
static size_t failures;
static size_t verified;

static uint64_t *page_at(size_t page) {
    return chunks[page / CHUNK_PAGES] + (page % CHUNK_PAGES) * WORDS;
}

static void verify(size_t page, uint64_t pass, uint64_t *expected) {
    uint64_t *got = page_at(page);
    pattern(expected, page, pass);
    if (memcmp(got, expected, PAGE) == 0) {
        verified++;
        return;
    }
    if (failures < MAX_REPORTED) {
        for (int w = 0; w < WORDS; w++) {
            if (got[w] != expected[w]) {
                printf("SWAPCHECK FAIL page=%zu pass=%" PRIu64 " block=%d word=%d expected=%016" PRIx64
                       " got=%016" PRIx64 "\n",
                       page, pass, w / 8, w % 8, expected[w], got[w]);
                break;
            }
        }
        fflush(stdout);
    }
    failures++;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4 || (argc == 4 && strncmp(argv[3], "corrupt=", 8) != 0)) {
        fprintf(stderr, "usage: swapcheck MIB [PASSES [corrupt=PAGE]]\n");
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    int passes = argc >= 3 && argv[2][0] ? atoi(argv[2]) : 2;
    long corrupt = argc == 4 ? atol(argv[3] + 8) : -1;
    if (mib == 0 || passes < 1) {
        fprintf(stderr, "swapcheck: MIB and PASSES must be positive\n");
        return 2;
    }
    pages = mib * 256;
    long memtotal = proc_value("/proc/meminfo", "MemTotal");
    long in0 = proc_value("/proc/vmstat", "pswpin"), out0 = proc_value("/proc/vmstat", "pswpout");
    printf("SWAPCHECK START mib=%zu pages=%zu passes=%d memtotal_kib=%ld\n", mib, pages, passes, memtotal);
    fflush(stdout);

    size_t nchunks = (pages + CHUNK_PAGES - 1) / CHUNK_PAGES;
    chunks = calloc(nchunks, sizeof *chunks);
    for (size_t c = 0; c < nchunks; c++) {
        chunks[c] = mmap(NULL, (size_t)CHUNK_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (chunks[c] == MAP_FAILED) {
            printf("SWAPCHECK FAIL mmap of chunk %zu failed\n", c);
            return 1;
        }
    }

    static uint64_t expected[WORDS];
    double start = now();
    for (int pass = 0; pass <= passes; pass++) {
        for (size_t page = 0; page < pages; page++) {
            if (pass > 0) verify(page, pass - 1, expected);
            if (pass < passes) pattern(page_at(page), page, pass);
            if ((page + 1) % PROGRESS_PAGES == 0 && page + 1 < pages) {
                printf("SWAPCHECK PROGRESS pass=%d mib=%zu seconds=%.1f pswpin=%ld pswpout=%ld\n", pass, (page + 1) / 256,
                       now() - start, proc_value("/proc/vmstat", "pswpin") - in0,
                       proc_value("/proc/vmstat", "pswpout") - out0);
                fflush(stdout);
            }
        }
        if (pass == 0 && corrupt >= 0 && (size_t)corrupt < pages) ((volatile uint8_t *)page_at(corrupt))[100] ^= 1;
        printf("SWAPCHECK PASS n=%d seconds=%.1f pswpin=%ld pswpout=%ld\n", pass, now() - start,
               proc_value("/proc/vmstat", "pswpin") - in0, proc_value("/proc/vmstat", "pswpout") - out0);
        fflush(stdout);
    }
    long in = proc_value("/proc/vmstat", "pswpin") - in0, out = proc_value("/proc/vmstat", "pswpout") - out0;
    if (failures > 0 || verified != pages * passes) {
        printf("SWAPCHECK FAIL failures=%zu pages=%zu verified=%zu\n", failures, pages, verified);
        return 1;
    }
    printf("SWAPCHECK OK pages=%zu verified=%zu passes=%d seconds=%.1f pswpin=%ld pswpout=%ld memtotal_kib=%ld\n", pages,
           verified, passes, now() - start, in, out, memtotal);
    return 0;
}
