/* procaddr: asks cuGetProcAddress as the CUDA runtime does and says what it got, with the
 * types of the generated gpuslice_cuda_abi.h. Built by vgpu-shim/tests/procaddr.rs.
 *
 *   procaddr matrix            stdin: lines "NAME VERSION FLAGS"; for each, both
 *                              cuGetProcAddress and cuGetProcAddress_v2, one line each:
 *                              "NAME VERSION FLAGS API RC OFFSET OBJECT SYMBOL" (OFFSET in OBJECT;
 *                              SYMBOL is what dladdr names at exactly that address, "-" if none)
 *   procaddr sync-other VERSION KERNEL_NS
 *                              a `busy` kernel of KERNEL_NS on context A, then context B
 *                              current, then cuCtxSynchronize as cuGetProcAddress(VERSION)
 *                              gives it, called the way that variant is called (with A when
 *                              it takes a context); prints the variant and the wait
 *   procaddr call-init         cuInit found with dlsym(RTLD_DEFAULT) before libcuda.so.1 is
 *                              loaded (the shim's export, which loads the driver itself) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpuslice_cuda_abi.h"

static gpuslice_sym_cuGetProcAddress gpa1;
static gpuslice_sym_cuGetProcAddress_v2 gpa2;

static void *need(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) {
        fprintf(stderr, "procaddr: no %s\n", name);
        exit(2);
    }
    return p;
}

static void load(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "procaddr: %s\n", dlerror());
        exit(2);
    }
    gpa1 = (gpuslice_sym_cuGetProcAddress)need(h, "cuGetProcAddress");
    gpa2 = (gpuslice_sym_cuGetProcAddress_v2)need(h, "cuGetProcAddress_v2");
}

static void report(const char *name, int version, unsigned long long flags, int api, CUresult rc, void *p) {
    Dl_info info;
    const char *object = "-", *symbol = "-";
    uintptr_t offset = (uintptr_t)p; /* from the object's base: comparable across processes */
    if (p && dladdr(p, &info)) {
        offset -= (uintptr_t)info.dli_fbase;
        if (info.dli_fname) {
            const char *slash = strrchr(info.dli_fname, '/');
            object = slash ? slash + 1 : info.dli_fname;
        }
        if (info.dli_sname && info.dli_saddr == p) symbol = info.dli_sname;
    }
    printf("%s %d %llu v%d %d %#" PRIxPTR " %s %s\n", name, version, flags, api, (int)rc, offset, object, symbol);
}

static int matrix(void) {
    char name[256];
    int version;
    unsigned long long flags;
    while (scanf("%255s %d %llu", name, &version, &flags) == 3) {
        void *p = NULL;
        CUresult rc = gpa1(name, &p, version, flags);
        report(name, version, flags, 1, rc, rc == CUDA_SUCCESS ? p : NULL);
        p = NULL;
        CUdriverProcAddressQueryResult status;
        rc = gpa2(name, &p, version, flags, &status);
        report(name, version, flags, 2, rc, rc == CUDA_SUCCESS ? p : NULL);
    }
    return 0;
}

#define CK(call)                                                                                   \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            fprintf(stderr, "procaddr: %s failed: %d\n", #call, (int)r_);                          \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static void *proc(const char *name, int version) {
    void *p = NULL;
    CUdriverProcAddressQueryResult status;
    if (gpa2(name, &p, version, 0, &status) != CUDA_SUCCESS || !p) {
        fprintf(stderr, "procaddr: cuGetProcAddress_v2(%s, %d) failed\n", name, version);
        exit(1);
    }
    return p;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int sync_other(int version, unsigned long long kernel_ns) {
    CUdevice dev;
    CUcontext a, b;
    CUmodule mod;
    CUfunction f;
    CK(((gpuslice_sym_cuInit)proc("cuInit", version))(0));
    CK(((gpuslice_sym_cuDeviceGet)proc("cuDeviceGet", version))(&dev, 0));
    /* Two contexts of the same device, as the runtime's cuCtxCreate at this version. */
    void *create = proc("cuCtxCreate", version);
    Dl_info info;
    const char *variant = dladdr(create, &info) && info.dli_sname ? info.dli_sname : "?";
    if (!strcmp(variant, "cuCtxCreate_v4")) {
        CK(((gpuslice_sym_cuCtxCreate_v4)create)(&a, NULL, 0, dev));
        CK(((gpuslice_sym_cuCtxCreate_v4)create)(&b, NULL, 0, dev));
    } else {
        CK(((gpuslice_sym_cuCtxCreate_v2)create)(&a, 0, dev));
        CK(((gpuslice_sym_cuCtxCreate_v2)create)(&b, 0, dev));
    }
    gpuslice_sym_cuCtxSetCurrent set = (gpuslice_sym_cuCtxSetCurrent)proc("cuCtxSetCurrent", version);
    CK(set(a));
    CK(((gpuslice_sym_cuModuleLoadData)proc("cuModuleLoadData", version))(&mod, "busy"));
    CK(((gpuslice_sym_cuModuleGetFunction)proc("cuModuleGetFunction", version))(&f, mod, "busy"));
    void *params[] = {&kernel_ns};
    CK(((gpuslice_sym_cuLaunchKernel)proc("cuLaunchKernel", version))(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL));
    CK(set(b));
    void *sync = proc("cuCtxSynchronize", version);
    const char *sync_variant = dladdr(sync, &info) && info.dli_saddr == sync && info.dli_sname ? info.dli_sname : "?";
    uint64_t t0 = now_ns();
    /* What the runtime of that version does: the pointer has the signature of the typedef
     * cudaTypedefs.h names for the version (PFN_cuCtxSynchronize_v13000 takes a context). */
    if (version >= 13000)
        CK(((PFN_cuCtxSynchronize_v13000)sync)(a));
    else
        CK(((PFN_cuCtxSynchronize_v2000)sync)());
    uint64_t waited = now_ns() - t0;
    printf("variant=%s\nwaited_ns=%" PRIu64 "\n", sync_variant, waited);
    return 0;
}

static int call_init(void) {
    gpuslice_sym_cuInit init = (gpuslice_sym_cuInit)dlsym(RTLD_DEFAULT, "cuInit");
    if (!init) {
        fprintf(stderr, "procaddr: no cuInit in the global scope\n");
        return 2;
    }
    CUresult r = init(0);
    printf("cuInit=%d\n", (int)r);
    return r == CUDA_SUCCESS ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "matrix")) {
        load();
        return matrix();
    }
    if (argc == 4 && !strcmp(argv[1], "sync-other")) {
        load();
        return sync_other(atoi(argv[2]), strtoull(argv[3], NULL, 10));
    }
    if (argc == 2 && !strcmp(argv[1], "call-init")) return call_init();
    fprintf(stderr, "usage: procaddr matrix | sync-other VERSION KERNEL_NS | call-init\n");
    return 2;
}
