// pagecmp: reads a block device page by page with O_DIRECT and compares it with the data it
// should hold — the power-loss scenario's check (tests/guest/power-loss.sh). Built static by
// scripts/guest/run.sh (gcc -static), shipped to the guest as /bin/pagecmp.
//
//   pagecmp DEVICE EXPECTED OUT
//
// Reads DEVICE (as many bytes as EXPECTED has) 1 MiB at a time with O_DIRECT; a chunk that
// fails is read again one 4 KiB page at a time, and each page that still fails counts as EIO
// (zeros in OUT). Writes what it read to OUT (so its sha256 can be taken) and prints one line:
//
//   pages=N differ=N zeros=N stale=N eio=N first=P
//
// differ: pages that read without error but otherwise than EXPECTED; zeros: those of them
// that read as zeros (a page the device forgot); stale: the others (another version); first:
// the first page that differs or failed (-1: none). Exits 0 when it could read and compare,
// whatever it found; 2 on a usage or I/O error of its own.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096
#define CHUNK (1 << 20)

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: pagecmp DEVICE EXPECTED OUT\n");
        return 2;
    }
    int dev = open(argv[1], O_RDONLY | O_DIRECT);
    int exp = open(argv[2], O_RDONLY);
    int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (dev < 0 || exp < 0 || out < 0) {
        perror("pagecmp: open");
        return 2;
    }
    struct stat st;
    if (fstat(exp, &st) != 0 || st.st_size % PAGE != 0) {
        fprintf(stderr, "pagecmp: %s is not whole pages\n", argv[2]);
        return 2;
    }
    unsigned char *buf, *want = malloc(CHUNK);
    if (posix_memalign((void **)&buf, PAGE, CHUNK) != 0 || !want) {
        fprintf(stderr, "pagecmp: out of memory\n");
        return 2;
    }
    long long pages = st.st_size / PAGE, differ = 0, zeros = 0, stale = 0, eio = 0, first = -1;
    for (off_t at = 0; at < st.st_size; at += CHUNK) {
        size_t len = st.st_size - at < CHUNK ? (size_t)(st.st_size - at) : CHUNK;
        char failed[CHUNK / PAGE] = {0};
        if (pread(exp, want, len, at) != (ssize_t)len) {
            perror("pagecmp: reading the expected data");
            return 2;
        }
        if (pread(dev, buf, len, at) != (ssize_t)len) {
            for (size_t p = 0; p < len / PAGE; p++) {
                ssize_t n = pread(dev, buf + p * PAGE, PAGE, at + p * PAGE);
                if (n != PAGE) {
                    if (n >= 0 || errno != EIO) {
                        perror("pagecmp: reading the device (not EIO)");
                        return 2;
                    }
                    failed[p] = 1;
                    memset(buf + p * PAGE, 0, PAGE);
                }
            }
        }
        for (size_t p = 0; p < len / PAGE; p++) {
            long long page = at / PAGE + p;
            if (failed[p]) {
                eio++;
            } else if (memcmp(buf + p * PAGE, want + p * PAGE, PAGE) != 0) {
                differ++;
                if (all_zero(buf + p * PAGE, PAGE))
                    zeros++;
                else
                    stale++;
            } else {
                continue;
            }
            if (first < 0) first = page;
        }
        if (write(out, buf, len) != (ssize_t)len) {
            perror("pagecmp: writing OUT");
            return 2;
        }
    }
    printf("pages=%lld differ=%lld zeros=%lld stale=%lld eio=%lld first=%lld\n", pages, differ, zeros, stale, eio, first);
    return 0;
}
