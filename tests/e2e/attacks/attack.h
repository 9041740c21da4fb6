/* Shared part of the guard's attack programs (tests/e2e/test_guard.sh): each program reaches
 * the CUDA driver a different way that gets around the interception library, then allocates
 * device memory in 1 GiB chunks and holds it, so that the host guard has to act.
 *
 *   <attack> GIB        allocate GIB chunks of 1 GiB on device 0, then hold them forever
 *
 * Prints "attack=<name>", one "held=<bytes> at_ns=<CLOCK_REALTIME ns>" line per chunk, then
 * "holding". Exits 1 with a line on stderr when the driver cannot be reached or refuses the
 * first chunk; a refusal after that is printed as "refused=<error>" before holding what it
 * has. No CUDA headers: the few types are declared here. */
#ifndef GPUSLICE_ATTACK_H
#define GPUSLICE_ATTACK_H

#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

/* Resolves a driver entry point by name, the attack's own way; NULL when it cannot. */
typedef void *(*lookup_fn)(const char *name);

static uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *need(lookup_fn lookup, const char *name) {
    void *f = lookup(name);
    if (!f) {
        fprintf(stderr, "attack: cannot resolve %s\n", name);
        exit(1);
    }
    return f;
}

static int run_attack(const char *attack, lookup_fn lookup, int argc, char **argv) {
    long gib = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    CUresult (*cuInit)(unsigned) = (CUresult(*)(unsigned))need(lookup, "cuInit");
    CUresult (*cuDeviceGet)(CUdevice *, int) = (CUresult(*)(CUdevice *, int))need(lookup, "cuDeviceGet");
    CUresult (*retain)(CUcontext *, CUdevice) =
        (CUresult(*)(CUcontext *, CUdevice))need(lookup, "cuDevicePrimaryCtxRetain");
    CUresult (*set_current)(CUcontext) = (CUresult(*)(CUcontext))need(lookup, "cuCtxSetCurrent");
    CUresult (*alloc)(CUdeviceptr *, size_t) = (CUresult(*)(CUdeviceptr *, size_t))need(lookup, "cuMemAlloc_v2");
    CUdevice dev;
    CUcontext ctx;
    CUresult r;
    printf("attack=%s\n", attack);
    fflush(stdout);
    if ((r = cuInit(0)) || (r = cuDeviceGet(&dev, 0)) || (r = retain(&ctx, dev)) || (r = set_current(ctx))) {
        fprintf(stderr, "attack: %s: no context (CUresult %d)\n", attack, r);
        return 1;
    }
    unsigned long long held = 0;
    for (long i = 0; i < gib; i++) {
        CUdeviceptr p;
        if ((r = alloc(&p, 1ull << 30)) != 0) {
            if (i == 0) {
                fprintf(stderr, "attack: %s: the first chunk was refused (CUresult %d)\n", attack, r);
                return 1;
            }
            printf("refused=%d\n", r);
            break;
        }
        held += 1ull << 30;
        printf("held=%llu at_ns=%llu\n", held, (unsigned long long)realtime_ns());
        fflush(stdout);
    }
    printf("holding\n");
    fflush(stdout);
    for (;;) pause();
}

#endif
