/* reset: memory allocated in a context, then the context goes, as cudaDeviceReset, the last
 * release of a primary context or cuCtxDestroy make it go; says what cuMemGetInfo shows before,
 * during and after, and what the device's default pool still reserves. Built by
 * vgpu-shim/tests/memory.rs, with the types of the generated gpuslice_cuda_abi.h.
 *
 *   reset reset | reset_v2 | release | destroy
 *
 * In the primary context of device 0 (for `destroy`, in a context it creates): cuMemAlloc,
 * cuMemAllocPitch, cuMemAllocManaged, cuArrayCreate, cuMipmappedArrayCreate and a
 * cuMemAllocAsync from the default pool, all left allocated; then cuDevicePrimaryCtxReset,
 * cuDevicePrimaryCtxReset_v2, cuDevicePrimaryCtxRelease_v2 (and a retain again) or
 * cuCtxDestroy_v2, with the primary context current again afterwards. Prints free_before,
 * free_during, free_after and pool_reserved (bytes). Functions come from dlsym of the exact
 * driver symbols. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuslice_cuda_abi.h"

static void *lib;

static void *need(const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "reset: no %s\n", name);
        exit(2);
    }
    return p;
}

#define FN(name) ((gpuslice_sym_##name)need(#name))

#define CK(call)                                                                                   \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            fprintf(stderr, "reset: %s failed: %d\n", #call, (int)r_);                             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static size_t free_now(void) {
    size_t free = 0, total = 0;
    CK(FN(cuMemGetInfo_v2)(&free, &total));
    return free;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: reset reset|reset_v2|release|destroy\n");
        return 2;
    }
    const char *mode = argv[1];
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "reset: %s\n", dlerror());
        return 2;
    }
    CUdevice dev;
    CUcontext primary, created = NULL;
    CK(FN(cuInit)(0));
    CK(FN(cuDeviceGet)(&dev, 0));
    CK(FN(cuDevicePrimaryCtxRetain)(&primary, dev));
    CK(FN(cuCtxSetCurrent)(primary));
    size_t before = free_now();
    if (!strcmp(mode, "destroy")) CK(FN(cuCtxCreate_v2)(&created, 0, dev));

    CUdeviceptr plain, pitched, managed, async;
    size_t pitch;
    CK(FN(cuMemAlloc_v2)(&plain, 64u << 20));
    CK(FN(cuMemAllocPitch_v2)(&pitched, &pitch, 1000, 1000, 4));
    CK(FN(cuMemAllocManaged)(&managed, 32u << 20, CU_MEM_ATTACH_GLOBAL));
    CUDA_ARRAY_DESCRIPTOR desc = {.Width = 1024, .Height = 1024, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CUarray array;
    CK(FN(cuArrayCreate_v2)(&array, &desc));
    CUDA_ARRAY3D_DESCRIPTOR desc3 = {.Width = 512, .Height = 512, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CUmipmappedArray mipmap;
    CK(FN(cuMipmappedArrayCreate)(&mipmap, &desc3, 3));
    CK(FN(cuMemAllocAsync)(&async, 8u << 20, NULL));
    CK(FN(cuStreamSynchronize)(NULL));
    size_t during = free_now();

    if (!strcmp(mode, "reset")) {
        CK(FN(cuDevicePrimaryCtxReset)(dev));
    } else if (!strcmp(mode, "reset_v2")) {
        CK(FN(cuDevicePrimaryCtxReset_v2)(dev));
    } else if (!strcmp(mode, "release")) {
        CK(FN(cuDevicePrimaryCtxRelease_v2)(dev));
        CK(FN(cuDevicePrimaryCtxRetain)(&primary, dev));
    } else if (!strcmp(mode, "destroy")) {
        CK(FN(cuCtxDestroy_v2)(created));
    } else {
        fprintf(stderr, "reset: unknown mode '%s'\n", mode);
        return 2;
    }
    CK(FN(cuCtxSetCurrent)(primary));
    size_t after = free_now();
    CUmemoryPool pool;
    cuuint64_t reserved = 0;
    CK(FN(cuDeviceGetMemPool)(&pool, dev));
    CK(FN(cuMemPoolGetAttribute)(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved));
    printf("free_before=%zu\nfree_during=%zu\nfree_after=%zu\npool_reserved=%llu\n", before, during, after,
           (unsigned long long)reserved);
    return 0;
}
