/* What the cudart tier's check programs share (included by cudart-check.c, graphmem-check.c,
 * interop-check.c and limits-check.c; the GPU tier builds the same sources with nvcc). */
#ifndef GPUSLICE_CUDART_CHECK_H
#define GPUSLICE_CUDART_CHECK_H

#include <cuda_runtime_api.h>
#include <stdlib.h>

/* A byte count with an optional K, M or G suffix (powers of 1024); decimal, or 0x hex. */
static inline unsigned long long parse_size(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    switch (*end) {
    case 'G': v <<= 10; /* fall through */
    case 'M': v <<= 10; /* fall through */
    case 'K': v <<= 10;
    }
    return v;
}

/* The device's free memory as the program sees it (0 when the runtime cannot say). */
static inline size_t free_now(void) {
    size_t f = 0, t = 0;
    return cudaMemGetInfo(&f, &t) == cudaSuccess ? f : 0;
}

#endif
