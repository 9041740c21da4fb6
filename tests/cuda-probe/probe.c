/* cuda-probe: drives the CUDA driver API and NVML the way real applications do, so the
 * test suites can check what gpuslice's interception library does to them.
 *
 * One source, two builds (see README.md and build.sh):
 *   cuda-probe         dlopen("libcuda.so.1") and cuGetProcAddress_v2 with base names, like
 *                      the CUDA runtime 12+ (or, with --dlsym, dlsym of the versioned names,
 *                      like older runtimes and Python wrappers); NVML through dlopen + dlsym.
 *   cuda-probe-direct  -DPROBE_DIRECT: linked against libcuda.so.1 and libnvidia-ml.so.1 and
 *                      calling the versioned functions directly (symbol interposition).
 *
 * Plain C11 plus glibc's libdl. CUDA and NVML types, values, prototypes and the
 * cuGetProcAddress variant table come from cuda-abi/include/gpuslice_cuda_abi.h, generated
 * from NVIDIA's headers by scripts/gen-cuda-abi.sh (build.sh passes its directory). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef PROBE_DIRECT
#define PROG "cuda-probe-direct"
#else
#define PROG "cuda-probe"
#endif

#include "gpuslice_cuda_abi.h"

/* nvml.h's NVML_STRUCT_VERSION(Memory, 2), a function-like macro the generator does not carry. */
#define NVML_MEMORY_V2_VERSION ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

/* ------------------------------------------------------------------------------------------
 * Entry points and their versioned variants.
 *
 * The variants of each name come from the generated table (every PFN_<name>_v<version>
 * typedef of cudaTypedefs.h and the symbol implementing it): cuGetProcAddress(name,
 * cudaVersion, flags) selects the same row the probe picks here, and the probe calls the
 * pointer with that symbol's generated signature (gpuslice_sym_<symbol>); in --dlsym mode it
 * looks that symbol up by name.
 * ---------------------------------------------------------------------------------------- */
#define ENTRY_LIST(X)                                                                          \
    X(cuGetErrorName)                                                                          \
    X(cuInit)                                                                                  \
    X(cuDriverGetVersion)                                                                      \
    X(cuDeviceGet)                                                                             \
    X(cuDeviceGetCount)                                                                        \
    X(cuDeviceGetName)                                                                         \
    X(cuDeviceGetUuid)                                                                         \
    X(cuDeviceTotalMem)                                                                        \
    X(cuDeviceGetAttribute)                                                                    \
    X(cuDevicePrimaryCtxRetain)                                                                \
    X(cuDevicePrimaryCtxRelease)                                                               \
    X(cuCtxSetCurrent)                                                                         \
    X(cuCtxCreate)                                                                             \
    X(cuCtxDestroy)                                                                            \
    X(cuCtxSynchronize)                                                                        \
    X(cuMemGetInfo)                                                                            \
    X(cuMemAlloc)                                                                              \
    X(cuMemFree)                                                                               \
    X(cuMemAllocPitch)                                                                         \
    X(cuMemAllocManaged)                                                                       \
    X(cuMemGetAllocationGranularity)                                                           \
    X(cuMemCreate)                                                                             \
    X(cuMemRelease)                                                                            \
    X(cuMemAddressReserve)                                                                     \
    X(cuMemAddressFree)                                                                        \
    X(cuMemMap)                                                                                \
    X(cuMemUnmap)                                                                              \
    X(cuMemSetAccess)                                                                          \
    X(cuStreamCreate)                                                                          \
    X(cuStreamDestroy)                                                                         \
    X(cuStreamSynchronize)                                                                     \
    X(cuMemAllocAsync)                                                                         \
    X(cuMemFreeAsync)                                                                          \
    X(cuMemPoolCreate)                                                                         \
    X(cuMemPoolDestroy)                                                                        \
    X(cuMemAllocFromPoolAsync)                                                                 \
    X(cuArrayCreate)                                                                           \
    X(cuArray3DCreate)                                                                         \
    X(cuArrayDestroy)                                                                          \
    X(cuMipmappedArrayCreate)                                                                  \
    X(cuMipmappedArrayDestroy)                                                                 \
    X(cuMemsetD8)                                                                              \
    X(cuMemcpyHtoD)                                                                            \
    X(cuMemcpyDtoH)                                                                            \
    X(cuModuleLoadData)                                                                        \
    X(cuModuleUnload)                                                                          \
    X(cuModuleGetFunction)                                                                     \
    X(cuLaunchKernel)                                                                          \
    X(cuLaunchKernelEx)                                                                        \
    X(cuLaunchCooperativeKernel)                                                               \
    X(cuLaunchCooperativeKernelMultiDevice)                                                    \
    X(cuGraphCreate)                                                                           \
    X(cuGraphAddKernelNode)                                                                    \
    X(cuGraphInstantiateWithFlags)                                                             \
    X(cuGraphLaunch)                                                                           \
    X(cuGraphExecDestroy)                                                                      \
    X(cuGraphDestroy)                                                                          \
    X(cuStreamBeginCapture)                                                                    \
    X(cuStreamEndCapture)                                                                      \
    X(cuGetProcAddress)

enum {
#define X(n) EP_##n,
    ENTRY_LIST(X)
#undef X
        EP_COUNT
};

struct entry {
    const char *base;
    /* resolution results */
    void *pfn;
    const char *sel_sym; /* the symbol the table selects for the version and flags (NULL: none) */
    int sel_ver;         /* its row's version (0: none) */
    const char *lookup;  /* the name that was looked up */
    CUresult res;
    CUdriverProcAddressQueryResult status;
};

static struct entry E[EP_COUNT] = {
#define X(n) [EP_##n] = {#n, 0, 0, 0, 0, 0, 0},
    ENTRY_LIST(X)
#undef X
};

/* ------------------------------------------------------------------------------------------
 * Options and global state
 * ---------------------------------------------------------------------------------------- */
static struct {
    const char *cmd;
    int device;
    int cuda_version;
    int ptsz;
    int dlsym_mode;
    const char *path;
    unsigned long long size;
    int have_size;
    unsigned long long count;
    unsigned long long height;
    unsigned long long levels;
    unsigned long long chunk;
    unsigned long long max_chunks;
    unsigned long long duration_ns;
    unsigned int nvml_index;
    double hold;
    int hold_set;
    int hold_forever;
    int do_free;
    unsigned long long repeat;
    unsigned long long retry_ms;
    unsigned long long until_bytes;
    int echo_pid;
    unsigned long long kernel_ns;
    int have_kernel_ns;
    double seconds;
    int have_count;
    unsigned long long sync_every;
    unsigned long long gap_ns; /* work: host idle after each launch */
    int bad_launch;            /* work: a failing launch after each synchronisation */
    unsigned long long stream_count;
    unsigned long long graph_nodes;
    const char *names[256];
    int n_names;
} opt;

#ifndef PROBE_DIRECT
static int driver_version; /* from cuDriverGetVersion before cuInit; 0 if unknown */
static int sel_version;    /* version that picks the variants: min(cuda_version, driver) */
static void *cuda_handle;
static gpuslice_sym_cuGetProcAddress_v2 gpa_v2;
static gpuslice_sym_cuGetProcAddress gpa_v1;
static void *gpa_addr;
static const char *gpa_name;
#endif

static cuuint64_t proc_flags(void) {
    return opt.ptsz ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT;
}

static const char *mode_name(void) {
#ifdef PROBE_DIRECT
    return "direct";
#else
    return opt.dlsym_mode ? "dlsym" : "runtime";
#endif
}

/* ------------------------------------------------------------------------------------------
 * Error names
 * ---------------------------------------------------------------------------------------- */
static const struct {
    int code;
    const char *name;
} cu_names[] = {
    {0, "CUDA_SUCCESS"},
    {1, "CUDA_ERROR_INVALID_VALUE"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY"},
    {3, "CUDA_ERROR_NOT_INITIALIZED"},
    {4, "CUDA_ERROR_DEINITIALIZED"},
    {34, "CUDA_ERROR_STUB_LIBRARY"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE"},
    {100, "CUDA_ERROR_NO_DEVICE"},
    {101, "CUDA_ERROR_INVALID_DEVICE"},
    {102, "CUDA_ERROR_DEVICE_NOT_LICENSED"},
    {200, "CUDA_ERROR_INVALID_IMAGE"},
    {201, "CUDA_ERROR_INVALID_CONTEXT"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU"},
    {218, "CUDA_ERROR_INVALID_PTX"},
    {221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"},
    {224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY"},
    {300, "CUDA_ERROR_INVALID_SOURCE"},
    {301, "CUDA_ERROR_FILE_NOT_FOUND"},
    {302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND"},
    {303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM"},
    {400, "CUDA_ERROR_INVALID_HANDLE"},
    {401, "CUDA_ERROR_ILLEGAL_STATE"},
    {500, "CUDA_ERROR_NOT_FOUND"},
    {600, "CUDA_ERROR_NOT_READY"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT"},
    {708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED"},
    {719, "CUDA_ERROR_LAUNCH_FAILED"},
    {800, "CUDA_ERROR_NOT_PERMITTED"},
    {801, "CUDA_ERROR_NOT_SUPPORTED"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"},
    {805, "CUDA_ERROR_MPS_CONNECTION_FAILED"},
    {909, "CUDA_ERROR_TIMEOUT"},
    {999, "CUDA_ERROR_UNKNOWN"},
};

static const char *builtin_cu_name(CUresult r) {
    for (size_t i = 0; i < sizeof cu_names / sizeof cu_names[0]; i++)
        if (cu_names[i].code == (int)r) return cu_names[i].name;
    return "CUDA_ERROR_UNRECOGNIZED";
}

/* The driver's name for r (cuGetErrorName), or the probe's own when that is unavailable. */
static const char *cu_name(CUresult r) {
    const char *s = NULL;
#ifdef PROBE_DIRECT
    if (cuGetErrorName(r, &s) != CUDA_SUCCESS) s = NULL;
#else
    if (E[EP_cuGetErrorName].pfn && ((gpuslice_sym_cuGetErrorName)E[EP_cuGetErrorName].pfn)(r, &s) != CUDA_SUCCESS)
        s = NULL;
#endif
    return s && *s ? s : builtin_cu_name(r);
}

#ifndef PROBE_DIRECT
static const char *status_name(CUdriverProcAddressQueryResult status) {
    switch (status) {
    case CU_GET_PROC_ADDRESS_SUCCESS: return "SUCCESS";
    case CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: return "SYMBOL_NOT_FOUND";
    case CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: return "VERSION_NOT_SUFFICIENT";
    default: return "UNKNOWN";
    }
}
#endif

/* A failed CUDA call: one line on stderr with the number and the name. Returns 1. */
static int cu_fail(const char *what, CUresult r) {
    fprintf(stderr, PROG ": %s failed: %d %s\n", what, r, cu_name(r));
    return 1;
}

#define CK(call, what)                                                                         \
    do {                                                                                       \
        CUresult r_ = (call);                                                                  \
        if (r_ != CUDA_SUCCESS) return cu_fail(what, r_);                                      \
    } while (0)

/* ------------------------------------------------------------------------------------------
 * Entry point resolution (runtime-style and dlsym-style builds)
 * ---------------------------------------------------------------------------------------- */
#ifndef PROBE_DIRECT
/* The row cuGetProcAddress(base, version, flags) selects, as gpuslice-cuda-abi's lookup:
 * the newest plain row at or below version, replaced by the newest per-thread one when the
 * per-thread flag asks for it and it is not older. */
static const struct gpuslice_proc_row *pick_variant(const char *base, int version, int per_thread) {
    const struct gpuslice_proc_row *plain = NULL, *pt = NULL;
    for (size_t i = 0; i < GPUSLICE_PROC_TABLE_LEN; i++) {
        const struct gpuslice_proc_row *r = &gpuslice_proc_table[i];
        if (strcmp(r->name, base) || r->version > version) continue;
        const struct gpuslice_proc_row **slot = r->per_thread ? &pt : &plain;
        if (!*slot || (*slot)->version < r->version) *slot = r;
    }
    if (per_thread && pt && (!plain || pt->version >= plain->version)) return pt;
    return plain;
}

static CUresult gpa_call(const char *name, void **pfn, CUdriverProcAddressQueryResult *status) {
    *pfn = NULL;
    *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (gpa_v2) return gpa_v2(name, pfn, opt.cuda_version, proc_flags(), status);
    CUresult r = gpa_v1(name, pfn, opt.cuda_version, proc_flags());
    *status = *pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return r;
}

static void resolve(struct entry *e) {
    const struct gpuslice_proc_row *v = pick_variant(e->base, sel_version, opt.ptsz);
    e->sel_ver = v ? v->version : 0;
    e->sel_sym = v ? v->symbol : NULL;
    if (!opt.dlsym_mode) {
        e->lookup = e->base;
        e->res = gpa_call(e->base, &e->pfn, &e->status);
        if (e->res != CUDA_SUCCESS) e->pfn = NULL;
        return;
    }
    if (!v) {
        e->lookup = "";
        e->pfn = NULL;
        e->res = CUDA_ERROR_NOT_FOUND;
        e->status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        return;
    }
    e->lookup = v->symbol;
    e->pfn = dlsym(cuda_handle, e->lookup);
    e->res = e->pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
    e->status = e->pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
}

/* What a call through an entry point that did not resolve returns. */
static CUresult unresolved(const struct entry *e) {
    CUresult r = e->res != CUDA_SUCCESS ? e->res : CUDA_ERROR_NOT_FOUND;
    if (opt.dlsym_mode && !e->sel_ver)
        fprintf(stderr, PROG ": %s is not available: no variant at or before CUDA version %d\n",
                e->base, sel_version);
    else
        fprintf(stderr, PROG ": %s is not available (%s(%s): %d %s, status %d %s)\n", e->base,
                opt.dlsym_mode ? "dlsym" : "cuGetProcAddress", e->lookup ? e->lookup : e->base,
                e->res, cu_name(r), e->status, status_name(e->status));
    return r;
}

static int load_cuda(void) {
    cuda_handle = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda_handle) {
        fprintf(stderr, PROG ": dlopen(libcuda.so.1) failed: %s\n", dlerror());
        return 1;
    }
    if (!opt.dlsym_mode) {
        gpa_name = "cuGetProcAddress_v2";
        gpa_addr = dlsym(cuda_handle, gpa_name);
        if (gpa_addr) {
            gpa_v2 = (gpuslice_sym_cuGetProcAddress_v2)gpa_addr;
        } else {
            gpa_name = "cuGetProcAddress";
            gpa_addr = dlsym(cuda_handle, gpa_name);
            if (!gpa_addr) {
                fprintf(stderr, PROG ": libcuda.so.1 has neither cuGetProcAddress_v2 nor "
                                "cuGetProcAddress\n");
                return 1;
            }
            gpa_v1 = (gpuslice_sym_cuGetProcAddress)gpa_addr;
        }
    }
    /* Like the runtime: the driver's version first (no cuInit needed), then the whole table.
     * Variants are picked for min(--cuda-version, driver version): a driver never returns a
     * variant newer than itself. */
    sel_version = opt.cuda_version;
    resolve(&E[EP_cuDriverGetVersion]);
    if (E[EP_cuDriverGetVersion].pfn) {
        int v = 0;
        if (((gpuslice_sym_cuDriverGetVersion)E[EP_cuDriverGetVersion].pfn)(&v) == CUDA_SUCCESS && v > 0)
            driver_version = v;
    }
    if (driver_version && driver_version < sel_version) sel_version = driver_version;
    for (int i = 0; i < EP_COUNT; i++) resolve(&E[i]);
    return 0;
}
#endif

/* ------------------------------------------------------------------------------------------
 * Call wrappers: direct calls in the direct build, calls through the resolved pointers in
 * the others, with the symbol's generated signature. p_<base>(args) calls <symbol>.
 * ---------------------------------------------------------------------------------------- */
#ifdef PROBE_DIRECT
#define CALL(base, sym, ...) sym(__VA_ARGS__)
#else
#define CALL(base, sym, ...)                                                                   \
    (E[EP_##base].pfn ? ((gpuslice_sym_##sym)E[EP_##base].pfn)(__VA_ARGS__)                   \
                      : unresolved(&E[EP_##base]))
#endif

#define p_cuInit(...) CALL(cuInit, cuInit, __VA_ARGS__)
#define p_cuDriverGetVersion(...) CALL(cuDriverGetVersion, cuDriverGetVersion, __VA_ARGS__)
#define p_cuDeviceGet(...) CALL(cuDeviceGet, cuDeviceGet, __VA_ARGS__)
#define p_cuDeviceGetCount(...) CALL(cuDeviceGetCount, cuDeviceGetCount, __VA_ARGS__)
#define p_cuDeviceGetName(...) CALL(cuDeviceGetName, cuDeviceGetName, __VA_ARGS__)
#define p_cuDeviceGetUuid(...) CALL(cuDeviceGetUuid, cuDeviceGetUuid_v2, __VA_ARGS__)
#define p_cuDeviceTotalMem(...) CALL(cuDeviceTotalMem, cuDeviceTotalMem_v2, __VA_ARGS__)
#define p_cuDeviceGetAttribute(...) CALL(cuDeviceGetAttribute, cuDeviceGetAttribute, __VA_ARGS__)
#define p_cuDevicePrimaryCtxRetain(...) CALL(cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain, __VA_ARGS__)
#define p_cuCtxSetCurrent(...) CALL(cuCtxSetCurrent, cuCtxSetCurrent, __VA_ARGS__)
#define p_cuCtxDestroy(...) CALL(cuCtxDestroy, cuCtxDestroy_v2, __VA_ARGS__)
#define p_cuMemGetInfo(...) CALL(cuMemGetInfo, cuMemGetInfo_v2, __VA_ARGS__)
#define p_cuMemAlloc(...) CALL(cuMemAlloc, cuMemAlloc_v2, __VA_ARGS__)
#define p_cuMemFree(...) CALL(cuMemFree, cuMemFree_v2, __VA_ARGS__)
#define p_cuMemAllocPitch(...) CALL(cuMemAllocPitch, cuMemAllocPitch_v2, __VA_ARGS__)
#define p_cuMemAllocManaged(...) CALL(cuMemAllocManaged, cuMemAllocManaged, __VA_ARGS__)
#define p_cuMemGetAllocationGranularity(...) CALL(cuMemGetAllocationGranularity, cuMemGetAllocationGranularity, __VA_ARGS__)
#define p_cuMemCreate(...) CALL(cuMemCreate, cuMemCreate, __VA_ARGS__)
#define p_cuMemRelease(...) CALL(cuMemRelease, cuMemRelease, __VA_ARGS__)
#define p_cuMemAddressReserve(...) CALL(cuMemAddressReserve, cuMemAddressReserve, __VA_ARGS__)
#define p_cuMemAddressFree(...) CALL(cuMemAddressFree, cuMemAddressFree, __VA_ARGS__)
#define p_cuMemMap(...) CALL(cuMemMap, cuMemMap, __VA_ARGS__)
#define p_cuMemUnmap(...) CALL(cuMemUnmap, cuMemUnmap, __VA_ARGS__)
#define p_cuMemSetAccess(...) CALL(cuMemSetAccess, cuMemSetAccess, __VA_ARGS__)
#define p_cuStreamCreate(...) CALL(cuStreamCreate, cuStreamCreate, __VA_ARGS__)
#define p_cuStreamDestroy(...) CALL(cuStreamDestroy, cuStreamDestroy_v2, __VA_ARGS__)
#define p_cuStreamSynchronize(...) CALL(cuStreamSynchronize, cuStreamSynchronize, __VA_ARGS__)
#define p_cuMemAllocAsync(...) CALL(cuMemAllocAsync, cuMemAllocAsync, __VA_ARGS__)
#define p_cuMemFreeAsync(...) CALL(cuMemFreeAsync, cuMemFreeAsync, __VA_ARGS__)
#define p_cuMemPoolCreate(...) CALL(cuMemPoolCreate, cuMemPoolCreate, __VA_ARGS__)
#define p_cuMemPoolDestroy(...) CALL(cuMemPoolDestroy, cuMemPoolDestroy, __VA_ARGS__)
#define p_cuMemAllocFromPoolAsync(...) CALL(cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, __VA_ARGS__)
#define p_cuArrayCreate(...) CALL(cuArrayCreate, cuArrayCreate_v2, __VA_ARGS__)
#define p_cuArray3DCreate(...) CALL(cuArray3DCreate, cuArray3DCreate_v2, __VA_ARGS__)
#define p_cuArrayDestroy(...) CALL(cuArrayDestroy, cuArrayDestroy, __VA_ARGS__)
#define p_cuMipmappedArrayCreate(...) CALL(cuMipmappedArrayCreate, cuMipmappedArrayCreate, __VA_ARGS__)
#define p_cuMipmappedArrayDestroy(...) CALL(cuMipmappedArrayDestroy, cuMipmappedArrayDestroy, __VA_ARGS__)
#define p_cuMemsetD8(...) CALL(cuMemsetD8, cuMemsetD8_v2, __VA_ARGS__)
#define p_cuMemcpyHtoD(...) CALL(cuMemcpyHtoD, cuMemcpyHtoD_v2, __VA_ARGS__)
#define p_cuMemcpyDtoH(...) CALL(cuMemcpyDtoH, cuMemcpyDtoH_v2, __VA_ARGS__)
#define p_cuModuleLoadData(...) CALL(cuModuleLoadData, cuModuleLoadData, __VA_ARGS__)
#define p_cuModuleUnload(...) CALL(cuModuleUnload, cuModuleUnload, __VA_ARGS__)
#define p_cuModuleGetFunction(...) CALL(cuModuleGetFunction, cuModuleGetFunction, __VA_ARGS__)
#define p_cuLaunchKernel(...) CALL(cuLaunchKernel, cuLaunchKernel, __VA_ARGS__)
#define p_cuLaunchKernelEx(...) CALL(cuLaunchKernelEx, cuLaunchKernelEx, __VA_ARGS__)
#define p_cuLaunchCooperativeKernel(...) CALL(cuLaunchCooperativeKernel, cuLaunchCooperativeKernel, __VA_ARGS__)
#define p_cuLaunchCooperativeKernelMultiDevice(...) CALL(cuLaunchCooperativeKernelMultiDevice, cuLaunchCooperativeKernelMultiDevice, __VA_ARGS__)
#define p_cuGraphCreate(...) CALL(cuGraphCreate, cuGraphCreate, __VA_ARGS__)
#define p_cuGraphAddKernelNode(...) CALL(cuGraphAddKernelNode, cuGraphAddKernelNode_v2, __VA_ARGS__)
#define p_cuGraphInstantiateWithFlags(...) CALL(cuGraphInstantiateWithFlags, cuGraphInstantiateWithFlags, __VA_ARGS__)
#define p_cuGraphLaunch(...) CALL(cuGraphLaunch, cuGraphLaunch, __VA_ARGS__)
#define p_cuGraphExecDestroy(...) CALL(cuGraphExecDestroy, cuGraphExecDestroy, __VA_ARGS__)
#define p_cuGraphDestroy(...) CALL(cuGraphDestroy, cuGraphDestroy, __VA_ARGS__)
#define p_cuStreamEndCapture(...) CALL(cuStreamEndCapture, cuStreamEndCapture, __VA_ARGS__)

/* cuCtxCreate, cuCtxSynchronize and cuStreamBeginCapture change signature between variants. */
#ifdef PROBE_DIRECT
static const char *ctx_create_name(void) { return "cuCtxCreate_v2"; }
static CUresult p_cuCtxCreate(CUcontext *pctx, CUdevice dev) { return cuCtxCreate_v2(pctx, 0, dev); }
static CUresult p_cuCtxSynchronize(void) { return cuCtxSynchronize(); }
static CUresult p_cuStreamBeginCapture(CUstream s) {
    return cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL);
}
#else
static int selected(const struct entry *e, const char *sym) { return e->sel_sym && !strcmp(e->sel_sym, sym); }
static const char *ctx_create_name(void) {
    const char *s = E[EP_cuCtxCreate].sel_sym;
    return s ? s : "cuCtxCreate";
}
static CUresult p_cuCtxCreate(CUcontext *pctx, CUdevice dev) {
    const struct entry *e = &E[EP_cuCtxCreate];
    if (!e->pfn) return unresolved(e);
    if (selected(e, "cuCtxCreate_v4")) return ((gpuslice_sym_cuCtxCreate_v4)e->pfn)(pctx, NULL, 0, dev);
    if (selected(e, "cuCtxCreate_v3")) return ((gpuslice_sym_cuCtxCreate_v3)e->pfn)(pctx, NULL, 0, 0, dev);
    return ((gpuslice_sym_cuCtxCreate_v2)e->pfn)(pctx, 0, dev);
}
static CUresult p_cuCtxSynchronize(void) {
    const struct entry *e = &E[EP_cuCtxSynchronize];
    if (!e->pfn) return unresolved(e);
    /* cuCtxSynchronize_v2: NULL is the current context */
    if (selected(e, "cuCtxSynchronize_v2")) return ((gpuslice_sym_cuCtxSynchronize_v2)e->pfn)(NULL);
    return ((gpuslice_sym_cuCtxSynchronize)e->pfn)();
}
static CUresult p_cuStreamBeginCapture(CUstream s) {
    const struct entry *e = &E[EP_cuStreamBeginCapture];
    if (!e->pfn) return unresolved(e);
    if (e->sel_sym && strstr(e->sel_sym, "_v2")) /* with a capture mode */
        return ((gpuslice_sym_cuStreamBeginCapture_v2)e->pfn)(s, CU_STREAM_CAPTURE_MODE_GLOBAL);
    return ((gpuslice_sym_cuStreamBeginCapture)e->pfn)(s);
}
#endif

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void usage(FILE *f) {
    fprintf(f,
            "usage: " PROG " [global options] COMMAND [options]\n"
            "global options:\n"
            "  --device N            CUDA device ordinal (default 0)\n"
            "  --cuda-version N      cudaVersion for cuGetProcAddress, 1000*major+10*minor "
            "(default 12080, or $CUDA_PROBE_CUDA_VERSION)\n"
            "  --ptsz                CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM\n"
#ifndef PROBE_DIRECT
            "  --dlsym               resolve versioned names with dlsym instead\n"
#endif
            "commands:\n"
            "  info\n"
            "  meminfo\n"
            "  nvml-meminfo [--index N]\n"
            "  alloc --path P --size BYTES [--count N] [--height H] [--levels L]\n"
            "        [--hold SECONDS | --hold-forever] [--free]\n"
            "  fill --path P --chunk BYTES [--max-chunks N] [--hold SECONDS | --hold-forever]\n"
            "  copy --size BYTES\n"
            "  launch --duration-ns N [--count K]\n"
            "  work --path P --kernel-ns D (--seconds S | --count N) [--sync-every N]\n"
            "       [--gap-ns G] [--bad-launch-after-sync] [--stream-count K] [--graph-nodes G]\n"
            "       [--echo-pid]\n"
            "  symbols [--name NAME]...\n"
            "paths: alloc pitch managed vmm async pool array array3d mipmap ctx\n"
            "work paths: kernel ex coop coop-multi graph capture\n"
            "sizes take an optional K, M, G, T (or KiB, MiB, GiB, TiB) suffix, powers of 1024\n");
}

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    usage(stderr);
    return 2;
}

static int parse_u64(const char *s, int suffixes, unsigned long long *out) {
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10);
    if (errno || end == s) return -1;
    unsigned shift = 0;
    if (*end && suffixes) {
        switch (*end) {
        case 'K': case 'k': shift = 10; break;
        case 'M': case 'm': shift = 20; break;
        case 'G': case 'g': shift = 30; break;
        case 'T': case 't': shift = 40; break;
        default: return -1;
        }
        end++;
        if (strcmp(end, "iB") == 0 || strcmp(end, "ib") == 0) end += 2;
    }
    if (*end) return -1;
    if (shift && v > (~0ULL >> shift)) return -1;
    *out = v << shift;
    return 0;
}

static int in_range(unsigned long long v, unsigned long long lo, unsigned long long hi) {
    return v >= lo && v <= hi;
}

static void sleep_seconds(double s) {
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* --hold / --hold-forever: say so, then sleep. Returns after a finite hold. */
static void maybe_hold(void) {
    if (!opt.hold_set && !opt.hold_forever) return;
    printf("holding\n");
    fflush(stdout);
    if (opt.hold_forever)
        for (;;) pause();
    sleep_seconds(opt.hold);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static CUdevice g_dev;
static CUcontext g_primary;

/* cuInit(0), then the primary context of --device made current. */
static int cuda_setup(void) {
    CK(p_cuInit(0), "cuInit");
    CK(p_cuDeviceGet(&g_dev, opt.device), "cuDeviceGet");
    CK(p_cuDevicePrimaryCtxRetain(&g_primary, g_dev), "cuDevicePrimaryCtxRetain");
    CK(p_cuCtxSetCurrent(g_primary), "cuCtxSetCurrent");
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * info, meminfo
 * ---------------------------------------------------------------------------------------- */
static int cmd_info(void) {
    int dv = 0, count = 0, sms = 0;
    char name[256];
    CUuuid u;
    size_t total_mem = 0, free_b = 0, total_b = 0;
    CK(p_cuDriverGetVersion(&dv), "cuDriverGetVersion");
    CK(p_cuDeviceGetCount(&count), "cuDeviceGetCount");
    CK(p_cuDeviceGetName(name, (int)sizeof name, g_dev), "cuDeviceGetName");
    name[sizeof name - 1] = 0;
    memset(&u, 0, sizeof u);
    CK(p_cuDeviceGetUuid(&u, g_dev), "cuDeviceGetUuid");
    CK(p_cuDeviceTotalMem(&total_mem, g_dev), "cuDeviceTotalMem");
    CK(p_cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, g_dev),
       "cuDeviceGetAttribute");
    CK(p_cuMemGetInfo(&free_b, &total_b), "cuMemGetInfo");
    const unsigned char *b = (const unsigned char *)u.bytes;
    printf("mode=%s\n", mode_name());
    printf("cuda_version=%d\n", opt.cuda_version);
    printf("driver_version=%d\n", dv);
    printf("device_count=%d\n", count);
    printf("device=%d\n", opt.device);
    printf("name=%s\n", name);
    printf("sm_count=%d\n", sms);
    printf("uuid=GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", b[0],
           b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
    printf("total_mem=%zu\n", total_mem);
    printf("free=%zu\n", free_b);
    printf("total=%zu\n", total_b);
    return 0;
}

static int cmd_meminfo(void) {
    size_t free_b = 0, total_b = 0, dev_total = 0;
    CK(p_cuMemGetInfo(&free_b, &total_b), "cuMemGetInfo");
    CK(p_cuDeviceTotalMem(&dev_total, g_dev), "cuDeviceTotalMem");
    printf("free=%zu\n", free_b);
    printf("total=%zu\n", total_b);
    printf("device_total=%zu\n", dev_total);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * nvml-meminfo
 * ---------------------------------------------------------------------------------------- */
static const char *nvml_name(nvmlReturn_t r) {
    static const char *names[] = {
        "NVML_SUCCESS", "NVML_ERROR_UNINITIALIZED", "NVML_ERROR_INVALID_ARGUMENT",
        "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_ALREADY_INITIALIZED",
        "NVML_ERROR_NOT_FOUND", "NVML_ERROR_INSUFFICIENT_SIZE", "NVML_ERROR_INSUFFICIENT_POWER",
        "NVML_ERROR_DRIVER_NOT_LOADED", "NVML_ERROR_TIMEOUT", "NVML_ERROR_IRQ_ISSUE",
        "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_FUNCTION_NOT_FOUND",
        "NVML_ERROR_CORRUPTED_INFOROM", "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED",
        "NVML_ERROR_OPERATING_SYSTEM", "NVML_ERROR_LIB_RM_VERSION_MISMATCH", "NVML_ERROR_IN_USE",
        "NVML_ERROR_MEMORY", "NVML_ERROR_NO_DATA", "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
        "NVML_ERROR_INSUFFICIENT_RESOURCES", "NVML_ERROR_FREQ_NOT_SUPPORTED",
        "NVML_ERROR_ARGUMENT_VERSION_MISMATCH", "NVML_ERROR_DEPRECATED", "NVML_ERROR_NOT_READY",
        "NVML_ERROR_GPU_NOT_FOUND", "NVML_ERROR_INVALID_STATE",
    };
    if (r >= 0 && (size_t)r < sizeof names / sizeof names[0]) return names[r];
    return r == 999 ? "NVML_ERROR_UNKNOWN" : "NVML_ERROR_UNRECOGNIZED";
}

static struct {
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    const char *(*error_string)(nvmlReturn_t);
    nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t *);
    nvmlReturn_t (*uuid)(nvmlDevice_t, char *, unsigned int);
    nvmlReturn_t (*meminfo)(nvmlDevice_t, nvmlMemory_t *);
    nvmlReturn_t (*meminfo_v2)(nvmlDevice_t, nvmlMemory_v2_t *);
} nv;

static int nvml_fail(const char *what, nvmlReturn_t r) {
    const char *s = nv.error_string ? nv.error_string(r) : NULL;
    fprintf(stderr, PROG ": %s failed: %d %s (%s)\n", what, r, nvml_name(r), s ? s : "?");
    return 1;
}

#define NK(fn, what, ...)                                                                      \
    do {                                                                                       \
        if (!nv.fn) {                                                                          \
            fprintf(stderr, PROG ": %s: symbol not found in libnvidia-ml.so.1\n", what);       \
            return 1;                                                                          \
        }                                                                                      \
        nvmlReturn_t r_ = nv.fn(__VA_ARGS__);                                                  \
        if (r_ != 0) return nvml_fail(what, r_);                                               \
    } while (0)

static int cmd_nvml_meminfo(void) {
#ifdef PROBE_DIRECT
    nv.init = nvmlInit_v2;
    nv.shutdown = nvmlShutdown;
    nv.error_string = nvmlErrorString;
    nv.handle_by_index = nvmlDeviceGetHandleByIndex_v2;
    nv.uuid = nvmlDeviceGetUUID;
    nv.meminfo = nvmlDeviceGetMemoryInfo;
    nv.meminfo_v2 = nvmlDeviceGetMemoryInfo_v2;
#else
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, PROG ": dlopen(libnvidia-ml.so.1) failed: %s\n", dlerror());
        return 1;
    }
    nv.init = (nvmlReturn_t(*)(void))dlsym(h, "nvmlInit_v2");
    nv.shutdown = (nvmlReturn_t(*)(void))dlsym(h, "nvmlShutdown");
    nv.error_string = (const char *(*)(nvmlReturn_t))dlsym(h, "nvmlErrorString");
    nv.handle_by_index =
        (nvmlReturn_t(*)(unsigned int, nvmlDevice_t *))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    nv.uuid = (nvmlReturn_t(*)(nvmlDevice_t, char *, unsigned int))dlsym(h, "nvmlDeviceGetUUID");
    nv.meminfo = (nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_t *))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nv.meminfo_v2 =
        (nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_v2_t *))dlsym(h, "nvmlDeviceGetMemoryInfo_v2");
#endif
    nvmlDevice_t dev;
    nvmlMemory_t m1;
    nvmlMemory_v2_t m2;
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    NK(init, "nvmlInit_v2");
    NK(handle_by_index, "nvmlDeviceGetHandleByIndex_v2", opt.nvml_index, &dev);
    NK(uuid, "nvmlDeviceGetUUID", dev, uuid, (unsigned int)sizeof uuid);
    printf("index=%u\n", opt.nvml_index);
    printf("uuid=%s\n", uuid);
    memset(&m1, 0, sizeof m1);
    NK(meminfo, "nvmlDeviceGetMemoryInfo", dev, &m1);
    printf("total=%llu\n", m1.total);
    printf("used=%llu\n", m1.used);
    printf("free=%llu\n", m1.free);
    memset(&m2, 0, sizeof m2);
    m2.version = NVML_MEMORY_V2_VERSION;
    NK(meminfo_v2, "nvmlDeviceGetMemoryInfo_v2", dev, &m2);
    printf("v2_total=%llu\n", m2.total);
    printf("v2_reserved=%llu\n", m2.reserved);
    printf("v2_used=%llu\n", m2.used);
    printf("v2_free=%llu\n", m2.free);
    NK(shutdown, "nvmlShutdown");
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Allocation paths (alloc, fill)
 * ---------------------------------------------------------------------------------------- */
enum path { P_ALLOC, P_PITCH, P_MANAGED, P_VMM, P_ASYNC, P_POOL, P_ARRAY, P_ARRAY3D, P_MIPMAP, P_CTX };
static const char *path_names[] = {"alloc", "pitch", "managed", "vmm",    "async",
                                   "pool",  "array", "array3d", "mipmap", "ctx"};

struct obj {
    CUdeviceptr ptr;
    size_t size; /* vmm: the reserved and mapped size */
    CUmemGenericAllocationHandle handle;
    CUarray arr;
    CUmipmappedArray mip;
    CUcontext ctx;
};

static struct {
    enum path path;
    size_t size;                   /* bytes asked for per allocation */
    size_t bytes_each;             /* what the probe accounts per allocation */
    size_t width, height, depth;   /* pitch (width in bytes), arrays (elements) */
    unsigned int levels;           /* mipmap */
    size_t pitch;                  /* pitch: from the first allocation */
    size_t granularity;            /* vmm */
    CUstream stream;               /* async, pool */
    CUmemoryPool pool;             /* pool */
    struct obj *objs;
    size_t n, cap;
    unsigned long long bytes;
    const char *failed; /* the call that failed */
} A;

static int parse_path(const char *s) {
    for (size_t i = 0; i < sizeof path_names / sizeof path_names[0]; i++)
        if (strcmp(s, path_names[i]) == 0) return (int)i;
    return -1;
}

static size_t ceil_div(size_t a, size_t b) { return a / b + (a % b != 0); }

/* Geometry of a float (4-byte) array holding about `size` bytes. */
static void array_geometry(size_t size) {
    size_t n = ceil_div(size ? size : 1, 4); /* elements */
    if (A.path == P_ARRAY3D) {
        A.width = n < 4096 ? n : 4096;
        A.height = ceil_div(n, A.width);
        if (A.height > 64) A.height = 64;
        A.depth = ceil_div(n, A.width * A.height);
    } else {
        if (opt.height) {
            A.height = (size_t)opt.height;
            A.width = ceil_div(n, A.height);
        } else {
            A.width = n < 16384 ? n : 16384; /* 64 KiB rows */
            A.height = ceil_div(n, A.width);
            if (A.height > 32768) {
                A.height = 32768;
                A.width = ceil_div(n, A.height);
            }
        }
        A.depth = 0;
    }
    A.bytes_each = A.width * A.height * (A.depth ? A.depth : 1) * 4;
}

#define AK(call, what)                                                                         \
    do {                                                                                       \
        CUresult r_ = (call);                                                                  \
        if (r_ != CUDA_SUCCESS) {                                                              \
            A.failed = what;                                                                   \
            return r_;                                                                         \
        }                                                                                      \
    } while (0)

/* Per-path setup before the first allocation. */
static CUresult alloc_setup(size_t size) {
    A.size = size;
    A.bytes_each = size;
    switch (A.path) {
    case P_PITCH:
        A.width = size;
        A.height = opt.height ? (size_t)opt.height : 1;
        break;
    case P_VMM: {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = g_dev;
        AK(p_cuMemGetAllocationGranularity(&A.granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
           "cuMemGetAllocationGranularity");
        if (A.granularity == 0) A.granularity = 1;
        A.bytes_each = ceil_div(size ? size : 1, A.granularity) * A.granularity;
        break;
    }
    case P_ASYNC:
        AK(p_cuStreamCreate(&A.stream, 0), "cuStreamCreate");
        break;
    case P_POOL: {
        CUmemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
        props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        props.location.id = g_dev;
        AK(p_cuStreamCreate(&A.stream, 0), "cuStreamCreate");
        AK(p_cuMemPoolCreate(&A.pool, &props), "cuMemPoolCreate");
        break;
    }
    case P_ARRAY:
    case P_ARRAY3D:
        array_geometry(size);
        break;
    case P_MIPMAP: {
        array_geometry(size);
        unsigned int max_levels = 1;
        for (size_t m = A.width > A.height ? A.width : A.height; m > 1; m >>= 1) max_levels++;
        A.levels = opt.levels ? (unsigned int)opt.levels : 4;
        if (A.levels > max_levels) A.levels = max_levels;
        /* level 0 plus the smaller levels */
        size_t total = 0, w = A.width, h = A.height;
        for (unsigned int l = 0; l < A.levels; l++) {
            total += w * h * 4;
            w = w > 1 ? w / 2 : 1;
            h = h > 1 ? h / 2 : 1;
        }
        A.bytes_each = total;
        break;
    }
    case P_CTX:
        A.bytes_each = 0;
        break;
    default:
        break;
    }
    return CUDA_SUCCESS;
}

static CUresult alloc_one(void) {
    struct obj o;
    memset(&o, 0, sizeof o);
    o.size = A.bytes_each;
    switch (A.path) {
    case P_ALLOC:
        AK(p_cuMemAlloc(&o.ptr, A.size), "cuMemAlloc");
        break;
    case P_PITCH: {
        size_t pitch = 0;
        AK(p_cuMemAllocPitch(&o.ptr, &pitch, A.width, A.height, 4), "cuMemAllocPitch");
        if (!A.pitch) A.pitch = pitch;
        o.size = pitch * A.height;
        break;
    }
    case P_MANAGED:
        AK(p_cuMemAllocManaged(&o.ptr, A.size, CU_MEM_ATTACH_GLOBAL), "cuMemAllocManaged");
        break;
    case P_VMM: {
        CUmemAllocationProp prop;
        CUmemAccessDesc access;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = g_dev;
        memset(&access, 0, sizeof access);
        access.location = prop.location;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        AK(p_cuMemCreate(&o.handle, o.size, &prop, 0), "cuMemCreate");
        CUresult r = p_cuMemAddressReserve(&o.ptr, o.size, 0, 0, 0);
        if (r != CUDA_SUCCESS) {
            p_cuMemRelease(o.handle);
            A.failed = "cuMemAddressReserve";
            return r;
        }
        r = p_cuMemMap(o.ptr, o.size, 0, o.handle, 0);
        if (r != CUDA_SUCCESS) {
            p_cuMemAddressFree(o.ptr, o.size);
            p_cuMemRelease(o.handle);
            A.failed = "cuMemMap";
            return r;
        }
        r = p_cuMemSetAccess(o.ptr, o.size, &access, 1);
        if (r != CUDA_SUCCESS) {
            p_cuMemUnmap(o.ptr, o.size);
            p_cuMemAddressFree(o.ptr, o.size);
            p_cuMemRelease(o.handle);
            A.failed = "cuMemSetAccess";
            return r;
        }
        break;
    }
    case P_ASYNC:
        AK(p_cuMemAllocAsync(&o.ptr, A.size, A.stream), "cuMemAllocAsync");
        AK(p_cuStreamSynchronize(A.stream), "cuStreamSynchronize");
        break;
    case P_POOL:
        AK(p_cuMemAllocFromPoolAsync(&o.ptr, A.size, A.pool, A.stream), "cuMemAllocFromPoolAsync");
        AK(p_cuStreamSynchronize(A.stream), "cuStreamSynchronize");
        break;
    case P_ARRAY: {
        CUDA_ARRAY_DESCRIPTOR d;
        memset(&d, 0, sizeof d);
        d.Width = A.width;
        d.Height = A.height;
        d.Format = CU_AD_FORMAT_FLOAT;
        d.NumChannels = 1;
        AK(p_cuArrayCreate(&o.arr, &d), "cuArrayCreate");
        break;
    }
    case P_ARRAY3D: {
        CUDA_ARRAY3D_DESCRIPTOR d;
        memset(&d, 0, sizeof d);
        d.Width = A.width;
        d.Height = A.height;
        d.Depth = A.depth;
        d.Format = CU_AD_FORMAT_FLOAT;
        d.NumChannels = 1;
        AK(p_cuArray3DCreate(&o.arr, &d), "cuArray3DCreate");
        break;
    }
    case P_MIPMAP: {
        CUDA_ARRAY3D_DESCRIPTOR d;
        memset(&d, 0, sizeof d);
        d.Width = A.width;
        d.Height = A.height;
        d.Depth = 0;
        d.Format = CU_AD_FORMAT_FLOAT;
        d.NumChannels = 1;
        AK(p_cuMipmappedArrayCreate(&o.mip, &d, A.levels), "cuMipmappedArrayCreate");
        break;
    }
    case P_CTX:
        AK(p_cuCtxCreate(&o.ctx, g_dev), ctx_create_name());
        break;
    }
    if (A.n == A.cap) {
        size_t cap = A.cap ? A.cap * 2 : 64;
        struct obj *p = realloc(A.objs, cap * sizeof *p);
        if (!p) {
            fprintf(stderr, PROG ": out of host memory\n");
            exit(1);
        }
        A.objs = p;
        A.cap = cap;
    }
    A.objs[A.n++] = o;
    A.bytes += o.size;
    return CUDA_SUCCESS;
}

/* Frees everything, newest first; prints freed=N. Returns 0, or 1 after a failed call. */
static int free_all(void) {
    size_t freed = 0;
    int rc = 0;
    CUresult r = CUDA_SUCCESS;
    const char *what = NULL;
    while (A.n > 0 && !rc) {
        struct obj *o = &A.objs[A.n - 1];
        switch (A.path) {
        case P_ALLOC:
        case P_PITCH:
        case P_MANAGED:
            what = "cuMemFree";
            r = p_cuMemFree(o->ptr);
            break;
        case P_VMM:
            what = "cuMemUnmap";
            r = p_cuMemUnmap(o->ptr, o->size);
            if (r == CUDA_SUCCESS) {
                what = "cuMemRelease";
                r = p_cuMemRelease(o->handle);
            }
            if (r == CUDA_SUCCESS) {
                what = "cuMemAddressFree";
                r = p_cuMemAddressFree(o->ptr, o->size);
            }
            break;
        case P_ASYNC:
        case P_POOL:
            what = "cuMemFreeAsync";
            r = p_cuMemFreeAsync(o->ptr, A.stream);
            break;
        case P_ARRAY:
        case P_ARRAY3D:
            what = "cuArrayDestroy";
            r = p_cuArrayDestroy(o->arr);
            break;
        case P_MIPMAP:
            what = "cuMipmappedArrayDestroy";
            r = p_cuMipmappedArrayDestroy(o->mip);
            break;
        case P_CTX:
            what = "cuCtxDestroy";
            r = p_cuCtxDestroy(o->ctx);
            break;
        }
        if (r != CUDA_SUCCESS) {
            rc = cu_fail(what, r);
            break;
        }
        A.n--;
        A.bytes -= o->size;
        freed++;
    }
    if (!rc && (A.path == P_ASYNC || A.path == P_POOL) && A.stream) {
        r = p_cuStreamSynchronize(A.stream);
        if (r != CUDA_SUCCESS) rc = cu_fail("cuStreamSynchronize", r);
    }
    if (!rc && A.pool) {
        r = p_cuMemPoolDestroy(A.pool);
        if (r != CUDA_SUCCESS) rc = cu_fail("cuMemPoolDestroy", r);
        else A.pool = NULL;
    }
    if (!rc && A.stream) {
        r = p_cuStreamDestroy(A.stream);
        if (r != CUDA_SUCCESS) rc = cu_fail("cuStreamDestroy", r);
        else A.stream = NULL;
    }
    /* cuCtxCreate made each new context current; go back to the primary one. */
    if (!rc && A.path == P_CTX) {
        r = p_cuCtxSetCurrent(g_primary);
        if (r != CUDA_SUCCESS) rc = cu_fail("cuCtxSetCurrent", r);
    }
    printf("freed=%zu\n", freed);
    return rc;
}

static void print_geometry(void) {
    printf("path=%s\n", path_names[A.path]);
    switch (A.path) {
    case P_VMM:
        printf("granularity=%zu\n", A.granularity);
        break;
    case P_PITCH:
        printf("width=%zu\nheight=%zu\n", A.width, A.height);
        if (A.pitch) printf("pitch=%zu\n", A.pitch);
        break;
    case P_ARRAY:
    case P_ARRAY3D:
    case P_MIPMAP:
        printf("width=%zu\nheight=%zu\ndepth=%zu\n", A.width, A.height, A.depth);
        if (A.path == P_MIPMAP) printf("levels=%u\n", A.levels);
        break;
    default:
        break;
    }
    printf("size=%zu\n", A.bytes_each);
}

static void print_error(CUresult r) {
    printf("error=%d\n", r);
    printf("error_name=%s\n", cu_name(r));
}

static int cmd_alloc(void) {
    CUresult r = alloc_setup((size_t)opt.size);
    unsigned long long done = 0;
    if (r == CUDA_SUCCESS)
        for (; done < opt.count; done++)
            if ((r = alloc_one()) != CUDA_SUCCESS) break;
    print_geometry();
    printf("allocated=%llu\n", done);
    printf("bytes=%llu\n", A.bytes);
    if (r != CUDA_SUCCESS) {
        print_error(r);
        return cu_fail(A.failed, r);
    }
    maybe_hold();
    if (opt.do_free) return free_all();
    return 0;
}

/* fill: allocate chunks until the first failure. --repeat N: fill and free N times (exit
 * status of the last round). --retry-ms M --until-bytes B: after an out-of-memory, retry every
 * M ms until B bytes are held (for limits that grow while the process runs). */
static int cmd_fill(void) {
    if (opt.echo_pid) printf("pid=%d\n", (int)getpid());
    unsigned long long rounds = opt.repeat ? opt.repeat : 1;
    int rc = 0;
    for (unsigned long long round = 0; round < rounds; round++) {
        CUresult r = alloc_setup((size_t)opt.chunk);
        unsigned long long done = 0;
        if (r == CUDA_SUCCESS)
            for (; done < opt.max_chunks; done++)
                if ((r = alloc_one()) != CUDA_SUCCESS) break;
        while (r == CUDA_ERROR_OUT_OF_MEMORY && opt.retry_ms && A.bytes < opt.until_bytes) {
            struct timespec ts = {(time_t)(opt.retry_ms / 1000), (long)(opt.retry_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            if ((r = alloc_one()) == CUDA_SUCCESS) {
                done++;
                if (A.bytes < opt.until_bytes) r = CUDA_ERROR_OUT_OF_MEMORY;
            }
        }
        print_geometry();
        printf("chunks=%llu\n", done);
        printf("bytes=%llu\n", A.bytes);
        if (opt.until_bytes && A.bytes >= opt.until_bytes) {
            printf("reached=1\n");
            maybe_hold();
            return free_all();
        }
        print_error(r);
        if (r == CUDA_SUCCESS && (opt.hold_set || opt.hold_forever)) {
            /* --max-chunks reached with room to spare: hold what we have, as asked. */
            printf("reached=1\n");
            maybe_hold();
            return free_all();
        }
        if (r == CUDA_SUCCESS) {
            fprintf(stderr, PROG ": fill: %llu chunks allocated without a failure (--max-chunks)\n",
                    done);
            return 1;
        }
        if (r != CUDA_ERROR_OUT_OF_MEMORY) return cu_fail(A.failed, r);
        maybe_hold();
        rc = free_all();
        if (rc) return rc;
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * copy, launch
 * ---------------------------------------------------------------------------------------- */
static int cmd_copy(void) {
    size_t n = (size_t)opt.size;
    unsigned char *pattern = malloc(n ? n : 1), *back = malloc(n ? n : 1);
    CUdeviceptr d = 0;
    if (!pattern || !back) {
        fprintf(stderr, PROG ": out of host memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) pattern[i] = (unsigned char)((i * 131 + (i >> 8) + 7) & 0xff);
    CK(p_cuMemAlloc(&d, n), "cuMemAlloc");
    CK(p_cuMemsetD8(d, 0xa5, n), "cuMemsetD8");
    memset(back, 0, n);
    CK(p_cuMemcpyDtoH(back, d, n), "cuMemcpyDtoH");
    printf("size=%zu\n", n);
    for (size_t i = 0; i < n; i++)
        if (back[i] != 0xa5) {
            printf("ok=0\nmismatch=memset\nmismatch_at=%zu\n", i);
            fprintf(stderr, PROG ": copy: byte %zu is 0x%02x after cuMemsetD8 0xa5\n", i, back[i]);
            return 1;
        }
    CK(p_cuMemcpyHtoD(d, pattern, n), "cuMemcpyHtoD");
    memset(back, 0, n);
    CK(p_cuMemcpyDtoH(back, d, n), "cuMemcpyDtoH");
    for (size_t i = 0; i < n; i++)
        if (back[i] != pattern[i]) {
            printf("ok=0\nmismatch=copy\nmismatch_at=%zu\n", i);
            fprintf(stderr, PROG ": copy: byte %zu is 0x%02x, wrote 0x%02x\n", i, back[i],
                    pattern[i]);
            return 1;
        }
    CK(p_cuMemFree(d), "cuMemFree");
    printf("ok=1\n");
    free(pattern);
    free(back);
    return 0;
}

/* busy(u64 ns): spins until %globaltimer has advanced by ns. PTX ISA 6.0 for sm_50, so the
 * driver JIT-compiles it for any GPU it supports. */
static const char busy_ptx[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    "\n"
    ".visible .entry busy(\n"
    "\t.param .u64 busy_param_0\n"
    ")\n"
    "{\n"
    "\t.reg .pred %p<2>;\n"
    "\t.reg .b64 %rd<5>;\n"
    "\n"
    "\tld.param.u64 %rd1, [busy_param_0];\n"
    "\tmov.u64 %rd2, %globaltimer;\n"
    "$L__spin:\n"
    "\tmov.u64 %rd3, %globaltimer;\n"
    "\tsub.s64 %rd4, %rd3, %rd2;\n"
    "\tsetp.lt.u64 %p1, %rd4, %rd1;\n"
    "\t@%p1 bra $L__spin;\n"
    "\tret;\n"
    "}\n";

static int cmd_launch(void) {
    CUmodule mod;
    CUfunction f;
    unsigned long long duration = opt.duration_ns, done = 0;
    CK(p_cuModuleLoadData(&mod, busy_ptx), "cuModuleLoadData");
    CK(p_cuModuleGetFunction(&f, mod, "busy"), "cuModuleGetFunction");
    uint64_t t0 = now_ns();
    CUresult r = CUDA_SUCCESS;
    const char *what = "cuLaunchKernel";
    for (; done < opt.count; done++) {
        void *params[] = {&duration};
        r = p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL);
        if (r != CUDA_SUCCESS) break;
    }
    if (r == CUDA_SUCCESS) {
        what = "cuCtxSynchronize";
        r = p_cuCtxSynchronize();
    }
    uint64_t t1 = now_ns();
    printf("launched=%llu\n", done);
    if (r != CUDA_SUCCESS) {
        print_error(r);
        return cu_fail(what, r);
    }
    printf("elapsed_ns=%" PRIu64 "\n", t1 - t0);
    CK(p_cuModuleUnload(mod), "cuModuleUnload");
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * work: keep the device busy with `busy` kernels through one launch path
 * ---------------------------------------------------------------------------------------- */
enum work_path { W_KERNEL, W_EX, W_COOP, W_COOP_MULTI, W_GRAPH, W_CAPTURE };
static const char *work_path_names[] = {"kernel", "ex", "coop", "coop-multi", "graph", "capture"};

#define MAX_STREAMS 64
#define MAX_DEVICES 64

static struct {
    enum work_path path;
    unsigned long long duration; /* the kernels' parameter, in ns */
    void *params[1];
    CUmodule mod;
    CUfunction f;
    CUstream streams[MAX_STREAMS];
    int nstreams; /* 0: the default stream only */
    CUgraph graph;
    CUgraphExec exec;
    int ndev; /* coop-multi */
    CUcontext ctx[MAX_DEVICES];
    CUmodule dmod[MAX_DEVICES];
    CUDA_LAUNCH_PARAMS multi[MAX_DEVICES];
} W;

static int parse_work_path(const char *s) {
    for (size_t i = 0; i < sizeof work_path_names / sizeof work_path_names[0]; i++)
        if (strcmp(s, work_path_names[i]) == 0) return (int)i;
    return -1;
}

/* The stream of launch number i. */
static CUstream work_stream(unsigned long long i) {
    return W.nstreams ? W.streams[i % (unsigned long long)W.nstreams] : NULL;
}

static CUresult work_sync(void) {
    if (W.path == W_COOP_MULTI) {
        for (int d = 0; d < W.ndev; d++) {
            CUresult r = p_cuStreamSynchronize(W.multi[d].hStream);
            if (r != CUDA_SUCCESS) return r;
        }
        return CUDA_SUCCESS;
    }
    if (!W.nstreams) return p_cuStreamSynchronize(NULL);
    for (int i = 0; i < W.nstreams; i++) {
        CUresult r = p_cuStreamSynchronize(W.streams[i]);
        if (r != CUDA_SUCCESS) return r;
    }
    return CUDA_SUCCESS;
}

/* One launch of launch number i through the path; *kernels gets how many kernels it ran. */
static CUresult work_launch(unsigned long long i, unsigned long long *kernels, const char **what) {
    CUstream s = work_stream(i);
    *kernels = 1;
    switch (W.path) {
    case W_KERNEL:
        *what = "cuLaunchKernel";
        return p_cuLaunchKernel(W.f, 1, 1, 1, 1, 1, 1, 0, s, W.params, NULL);
    case W_EX: {
        CUlaunchConfig config;
        memset(&config, 0, sizeof config);
        config.gridDimX = config.gridDimY = config.gridDimZ = 1;
        config.blockDimX = config.blockDimY = config.blockDimZ = 1;
        config.hStream = s;
        *what = "cuLaunchKernelEx";
        return p_cuLaunchKernelEx(&config, W.f, W.params, NULL);
    }
    case W_COOP:
        *what = "cuLaunchCooperativeKernel";
        return p_cuLaunchCooperativeKernel(W.f, 1, 1, 1, 1, 1, 1, 0, s, W.params);
    case W_COOP_MULTI:
        *kernels = (unsigned long long)W.ndev;
        *what = "cuLaunchCooperativeKernelMultiDevice";
        return p_cuLaunchCooperativeKernelMultiDevice(W.multi, (unsigned int)W.ndev, 0);
    case W_GRAPH:
    case W_CAPTURE:
        *kernels = opt.graph_nodes;
        *what = "cuGraphLaunch";
        return p_cuGraphLaunch(W.exec, s);
    }
    return CUDA_ERROR_INVALID_VALUE;
}

/* The graph of --graph-nodes kernels, one after another: node by node, or captured from the
 * first stream. */
static int work_graph(void) {
    if (W.path == W_GRAPH) {
        CK(p_cuGraphCreate(&W.graph, 0), "cuGraphCreate");
        CUgraphNode prev = NULL;
        for (unsigned long long i = 0; i < opt.graph_nodes; i++) {
            CUDA_KERNEL_NODE_PARAMS np;
            memset(&np, 0, sizeof np);
            np.func = W.f;
            np.gridDimX = np.gridDimY = np.gridDimZ = 1;
            np.blockDimX = np.blockDimY = np.blockDimZ = 1;
            np.kernelParams = W.params;
            CUgraphNode node;
            CK(p_cuGraphAddKernelNode(&node, W.graph, prev ? &prev : NULL, prev ? 1 : 0, &np),
               "cuGraphAddKernelNode");
            prev = node;
        }
    } else {
        CK(p_cuStreamBeginCapture(W.streams[0]), "cuStreamBeginCapture");
        for (unsigned long long i = 0; i < opt.graph_nodes; i++)
            CK(p_cuLaunchKernel(W.f, 1, 1, 1, 1, 1, 1, 0, W.streams[0], W.params, NULL),
               "cuLaunchKernel (capturing)");
        CK(p_cuStreamEndCapture(W.streams[0], &W.graph), "cuStreamEndCapture");
    }
    CK(p_cuGraphInstantiateWithFlags(&W.exec, W.graph, 0), "cuGraphInstantiateWithFlags");
    return 0;
}

/* One stream, module and launch per device, each in its device's primary context. */
static int work_multi_device(void) {
    int count = 0;
    CK(p_cuDeviceGetCount(&count), "cuDeviceGetCount");
    W.ndev = count < MAX_DEVICES ? count : MAX_DEVICES;
    for (int d = 0; d < W.ndev; d++) {
        CUdevice dev;
        CUfunction f;
        CUstream s;
        CK(p_cuDeviceGet(&dev, d), "cuDeviceGet");
        CK(p_cuDevicePrimaryCtxRetain(&W.ctx[d], dev), "cuDevicePrimaryCtxRetain");
        CK(p_cuCtxSetCurrent(W.ctx[d]), "cuCtxSetCurrent");
        CK(p_cuModuleLoadData(&W.dmod[d], busy_ptx), "cuModuleLoadData");
        CK(p_cuModuleGetFunction(&f, W.dmod[d], "busy"), "cuModuleGetFunction");
        CK(p_cuStreamCreate(&s, 0), "cuStreamCreate");
        CUDA_LAUNCH_PARAMS *m = &W.multi[d];
        memset(m, 0, sizeof *m);
        m->function = f;
        m->gridDimX = m->gridDimY = m->gridDimZ = 1;
        m->blockDimX = m->blockDimY = m->blockDimZ = 1;
        m->hStream = s;
        m->kernelParams = W.params;
    }
    CK(p_cuCtxSetCurrent(g_primary), "cuCtxSetCurrent");
    return 0;
}

static int work_cleanup(void) {
    if (W.exec) CK(p_cuGraphExecDestroy(W.exec), "cuGraphExecDestroy");
    if (W.graph) CK(p_cuGraphDestroy(W.graph), "cuGraphDestroy");
    for (int d = 0; d < W.ndev; d++) {
        CK(p_cuCtxSetCurrent(W.ctx[d]), "cuCtxSetCurrent");
        CK(p_cuStreamDestroy(W.multi[d].hStream), "cuStreamDestroy");
        CK(p_cuModuleUnload(W.dmod[d]), "cuModuleUnload");
    }
    CK(p_cuCtxSetCurrent(g_primary), "cuCtxSetCurrent");
    for (int i = 0; i < W.nstreams; i++) CK(p_cuStreamDestroy(W.streams[i]), "cuStreamDestroy");
    if (W.mod) CK(p_cuModuleUnload(W.mod), "cuModuleUnload");
    return 0;
}

/* --gap-ns: the host's own work between two launches (a framework's Python, a sampler), during
 * which it launches nothing: the thread sleeps, as a host busy elsewhere leaves the GPU alone.
 * A sleep wakes up to tens of microseconds late; the rate printed is what was achieved. */
static void host_idle(unsigned long long ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int cmd_work(void) {
    int rc;
    W.duration = opt.kernel_ns;
    W.params[0] = &W.duration;
    if (opt.echo_pid) printf("pid=%d\n", (int)getpid());
    printf("path=%s\n", work_path_names[W.path]);
    if (W.path == W_COOP_MULTI) {
        if ((rc = work_multi_device())) return rc;
        printf("devices=%d\n", W.ndev);
    } else {
        CK(p_cuModuleLoadData(&W.mod, busy_ptx), "cuModuleLoadData");
        CK(p_cuModuleGetFunction(&W.f, W.mod, "busy"), "cuModuleGetFunction");
        W.nstreams = (int)opt.stream_count;
        for (int i = 0; i < W.nstreams; i++) CK(p_cuStreamCreate(&W.streams[i], 0), "cuStreamCreate");
        if ((W.path == W_GRAPH || W.path == W_CAPTURE) && (rc = work_graph())) return rc;
    }
    uint64_t limit = (uint64_t)(opt.seconds * 1e9);
    unsigned long long launched = 0, kernels = 0, bad = 0;
    uint64_t t0 = now_ns();
    printf("start_ns=%" PRIu64 "\n", t0);
    fflush(stdout);
    CUresult r = CUDA_SUCCESS;
    const char *what = "";
    while (limit ? now_ns() - t0 < limit : launched < opt.count) {
        unsigned long long k = 0;
        r = work_launch(launched, &k, &what);
        if (r != CUDA_SUCCESS) break;
        launched++;
        kernels += k;
        if (opt.gap_ns) host_idle(opt.gap_ns);
        if (launched % opt.sync_every == 0 && (r = work_sync()) != CUDA_SUCCESS) {
            what = "cuStreamSynchronize";
            break;
        }
        if (launched % opt.sync_every == 0 && opt.bad_launch) {
            /* The first launch after a synchronisation, refused by the driver (no such
             * function): what a program that wants to slip past the pacing would try. */
            if (p_cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, work_stream(launched), W.params, NULL) ==
                CUDA_SUCCESS) {
                fprintf(stderr, PROG ": a launch of no function succeeded\n");
                return 1;
            }
            bad++;
        }
    }
    if (r == CUDA_SUCCESS && (r = work_sync()) != CUDA_SUCCESS) what = "cuStreamSynchronize";
    uint64_t t1 = now_ns();
    printf("launched=%llu\n", launched);
    if (r != CUDA_SUCCESS) {
        print_error(r);
        return cu_fail(what, r);
    }
    unsigned long long kernel_ns = kernels * W.duration;
    uint64_t wall = t1 - t0;
    printf("kernels=%llu\n", kernels);
    printf("kernel_ns=%llu\n", kernel_ns);
    printf("wall_ns=%" PRIu64 "\n", wall);
    printf("share_pct=%.1f\n", wall ? 100.0 * (double)kernel_ns / (double)wall : 0.0);
    printf("kernels_per_s=%.1f\n", wall ? 1e9 * (double)kernels / (double)wall : 0.0);
    if (opt.bad_launch) printf("bad_launches=%llu\n", bad);
    printf("end_ns=%" PRIu64 "\n", t1);
    return work_cleanup();
}

/* ------------------------------------------------------------------------------------------
 * bench-launch, bench-alloc: the cost of one call, for overhead benchmarks (ns per operation,
 * best of 5 runs of --count operations each, so one disturbed run does not count)
 * ---------------------------------------------------------------------------------------- */
static int cmd_bench_launch(void) {
    CUmodule mod;
    CUfunction f;
    unsigned long long duration = 0, n = opt.count ? opt.count : 100000;
    CK(p_cuModuleLoadData(&mod, busy_ptx), "cuModuleLoadData");
    CK(p_cuModuleGetFunction(&f, mod, "busy"), "cuModuleGetFunction");
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        uint64_t t0 = now_ns();
        for (unsigned long long i = 0; i < n; i++) {
            void *params[] = {&duration};
            CK(p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL), "cuLaunchKernel");
        }
        uint64_t t1 = now_ns();
        CK(p_cuCtxSynchronize(), "cuCtxSynchronize");
        double per = (double)(t1 - t0) / (double)n;
        if (per < best) best = per;
    }
    printf("ops=%llu\nns_per_op=%.1f\n", n, best);
    CK(p_cuModuleUnload(mod), "cuModuleUnload");
    return 0;
}

static int cmd_bench_alloc(void) {
    unsigned long long n = opt.count ? opt.count : 20000;
    size_t size = opt.have_size ? (size_t)opt.size : (size_t)1 << 20;
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        uint64_t t0 = now_ns();
        for (unsigned long long i = 0; i < n; i++) {
            CUdeviceptr d = 0;
            CK(p_cuMemAlloc(&d, size), "cuMemAlloc");
            CK(p_cuMemFree(d), "cuMemFree");
        }
        double per = (double)(now_ns() - t0) / (double)n;
        if (per < best) best = per;
    }
    printf("ops=%llu\nsize=%zu\nns_per_op=%.1f\n", n, size, best);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * symbols
 * ---------------------------------------------------------------------------------------- */
static void print_addr(const char *key, const char *suffix, void *p) {
    Dl_info info;
    memset(&info, 0, sizeof info);
    int found = p && dladdr(p, &info);
    printf("%s%s=0x%" PRIxPTR "\n", key, suffix, (uintptr_t)p);
    printf("%s%s.lib=%s\n", key, suffix, found && info.dli_fname ? info.dli_fname : "");
    printf("%s%s.sym=%s\n", key, suffix,
           found && info.dli_sname && info.dli_saddr == p ? info.dli_sname : "");
}

static void print_symbol(const char *name, void *p, CUresult res, int status, const char *lookup) {
    print_addr(name, "", p);
    printf("%s.status=%d\n", name, status);
    printf("%s.result=%d\n", name, res);
    printf("%s.lookup=%s\n", name, lookup ? lookup : "");
}

static int cmd_symbols(void) {
    printf("mode=%s\n", mode_name());
    printf("cuda_version=%d\n", opt.cuda_version);
    printf("flags=%llu\n", (unsigned long long)proc_flags());
#ifdef PROBE_DIRECT
    printf("resolver.name=cuGetProcAddress_v2\n");
    print_addr("resolver", "", (void *)cuGetProcAddress_v2);
#define LOOKUP(name, pp, res, st) ((res) = cuGetProcAddress_v2(name, pp, opt.cuda_version, proc_flags(), st))
#else
    printf("driver_version=%d\n", driver_version);
    if (!opt.dlsym_mode) {
        printf("resolver.name=%s\n", gpa_name);
        print_addr("resolver", "", gpa_addr);
    }
#endif
    if (opt.n_names == 0) {
        for (int i = 0; i < EP_COUNT; i++) {
            struct entry *e = &E[i];
#ifdef PROBE_DIRECT
            e->lookup = e->base;
            LOOKUP(e->base, &e->pfn, e->res, &e->status);
#endif
            print_symbol(e->base, e->pfn, e->res, e->status, e->lookup);
        }
        return 0;
    }
    for (int i = 0; i < opt.n_names; i++) {
        void *p = NULL;
        CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        CUresult res;
#ifdef PROBE_DIRECT
        LOOKUP(opt.names[i], &p, res, &status);
#else
        if (opt.dlsym_mode) {
            p = dlsym(cuda_handle, opt.names[i]);
            res = p ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
            status = p ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        } else {
            res = gpa_call(opt.names[i], &p, &status);
        }
#endif
        print_symbol(opt.names[i], p, res, status, opt.names[i]);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------------------------- */
static int parse_args(int argc, char **argv) {
    opt.cuda_version = 12080;
    const char *env_version = getenv("CUDA_PROBE_CUDA_VERSION"); /* the default, for test suites */
    if (env_version && *env_version) opt.cuda_version = atoi(env_version);
    opt.count = 1;
    opt.sync_every = 4;
    opt.stream_count = 1;
    opt.graph_nodes = 4;
    opt.max_chunks = 1000000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long v;
#define NEED_VALUE()                                                                           \
    do {                                                                                       \
        if (!val) return usage_error("%s needs a value", a);                                   \
        i++;                                                                                   \
    } while (0)
#define NUM(dst, suffixes, lo, hi)                                                             \
    do {                                                                                       \
        NEED_VALUE();                                                                          \
        if (parse_u64(val, suffixes, &v) || !in_range(v, lo, hi))                              \
            return usage_error("%s: bad value '%s'", a, val);                                  \
        dst = v;                                                                               \
    } while (0)
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--device") == 0) {
            NUM(opt.device, 0, 0, 1u << 20);
        } else if (strcmp(a, "--cuda-version") == 0) {
            NUM(opt.cuda_version, 0, 1, 1000000);
        } else if (strcmp(a, "--ptsz") == 0) {
            opt.ptsz = 1;
        } else if (strcmp(a, "--dlsym") == 0) {
#ifdef PROBE_DIRECT
            return usage_error("--dlsym: the direct build calls libcuda.so.1's functions directly");
#else
            opt.dlsym_mode = 1;
#endif
        } else if (strcmp(a, "--path") == 0) {
            NEED_VALUE();
            opt.path = val;
        } else if (strcmp(a, "--size") == 0) {
            NUM(opt.size, 1, 0, ~0ULL);
            opt.have_size = 1;
        } else if (strcmp(a, "--count") == 0) {
            NUM(opt.count, 0, 0, ~0ULL);
            opt.have_count = 1;
        } else if (strcmp(a, "--kernel-ns") == 0) {
            NUM(opt.kernel_ns, 0, 0, 3600000000000ULL);
            opt.have_kernel_ns = 1;
        } else if (strcmp(a, "--seconds") == 0) {
            NEED_VALUE();
            char *end;
            errno = 0;
            double s = strtod(val, &end);
            if (errno || end == val || *end || !(s > 0) || s > 1e6)
                return usage_error("--seconds: bad value '%s'", val);
            opt.seconds = s;
        } else if (strcmp(a, "--sync-every") == 0) {
            NUM(opt.sync_every, 0, 1, 1000000);
        } else if (strcmp(a, "--gap-ns") == 0) {
            NUM(opt.gap_ns, 0, 0, 60000000000ULL);
        } else if (strcmp(a, "--bad-launch-after-sync") == 0) {
            opt.bad_launch = 1;
        } else if (strcmp(a, "--stream-count") == 0) {
            NUM(opt.stream_count, 0, 0, 64);
        } else if (strcmp(a, "--graph-nodes") == 0) {
            NUM(opt.graph_nodes, 0, 1, 1024);
        } else if (strcmp(a, "--height") == 0) {
            NUM(opt.height, 0, 1, 1u << 30);
        } else if (strcmp(a, "--levels") == 0) {
            NUM(opt.levels, 0, 1, 64);
        } else if (strcmp(a, "--chunk") == 0) {
            NUM(opt.chunk, 1, 1, ~0ULL);
        } else if (strcmp(a, "--max-chunks") == 0) {
            NUM(opt.max_chunks, 0, 1, ~0ULL);
        } else if (strcmp(a, "--duration-ns") == 0) {
            NUM(opt.duration_ns, 0, 0, ~0ULL);
        } else if (strcmp(a, "--index") == 0) {
            NUM(opt.nvml_index, 0, 0, 1u << 20);
        } else if (strcmp(a, "--hold") == 0) {
            NEED_VALUE();
            char *end;
            errno = 0;
            double s = strtod(val, &end);
            if (errno || end == val || *end || !(s >= 0) || s > 1e9)
                return usage_error("--hold: bad value '%s'", val);
            opt.hold = s;
            opt.hold_set = 1;
        } else if (strcmp(a, "--hold-forever") == 0) {
            opt.hold_forever = 1;
        } else if (strcmp(a, "--free") == 0) {
            opt.do_free = 1;
        } else if (strcmp(a, "--repeat") == 0) {
            NUM(opt.repeat, 0, 1, ~0ULL);
        } else if (strcmp(a, "--retry-ms") == 0) {
            NUM(opt.retry_ms, 0, 1, 3600000ULL);
        } else if (strcmp(a, "--until-bytes") == 0) {
            NUM(opt.until_bytes, 1, 1, ~0ULL);
        } else if (strcmp(a, "--echo-pid") == 0) {
            opt.echo_pid = 1;
        } else if (strcmp(a, "--name") == 0) {
            NEED_VALUE();
            if (opt.n_names == (int)(sizeof opt.names / sizeof opt.names[0]))
                return usage_error("too many --name");
            opt.names[opt.n_names++] = val;
        } else if (a[0] == '-') {
            return usage_error("unknown option '%s'", a);
        } else if (!opt.cmd) {
            opt.cmd = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
#undef NUM
#undef NEED_VALUE
    }
    if (!opt.cmd) return usage_error("no command");
    if (opt.hold_set && opt.hold_forever) return usage_error("--hold and --hold-forever conflict");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = parse_args(argc, argv);
    if (rc) return rc;

    const char *c = opt.cmd;
    int is_alloc = strcmp(c, "alloc") == 0, is_fill = strcmp(c, "fill") == 0;
    int is_work = strcmp(c, "work") == 0;
    int known = is_alloc || is_fill || is_work || !strcmp(c, "info") || !strcmp(c, "meminfo") ||
                !strcmp(c, "nvml-meminfo") || !strcmp(c, "copy") || !strcmp(c, "launch") ||
                !strcmp(c, "symbols") || !strcmp(c, "bench-launch") || !strcmp(c, "bench-alloc");
    if (!known) return usage_error("unknown command '%s'", c);
    if (is_alloc || is_fill) {
        if (!opt.path) return usage_error("%s needs --path", c);
        if (parse_path(opt.path) < 0) return usage_error("--path: unknown path '%s'", opt.path);
        A.path = (enum path)parse_path(opt.path);
        if (is_alloc && !opt.have_size && A.path != P_CTX) return usage_error("alloc needs --size");
        if (is_fill && !opt.chunk && A.path != P_CTX) return usage_error("fill needs --chunk");
    }
    if (!strcmp(c, "copy") && !opt.have_size) return usage_error("copy needs --size");
    if (is_work) {
        if (!opt.path) return usage_error("work needs --path");
        if (parse_work_path(opt.path) < 0) return usage_error("--path: unknown work path '%s'", opt.path);
        W.path = (enum work_path)parse_work_path(opt.path);
        if (!opt.have_kernel_ns) return usage_error("work needs --kernel-ns");
        if ((opt.seconds > 0) == opt.have_count) return usage_error("work needs one of --seconds and --count");
        if (W.path == W_CAPTURE && opt.stream_count == 0)
            return usage_error("work --path capture needs --stream-count 1 or more (the legacy stream cannot capture)");
        if (opt.bad_launch && W.path != W_KERNEL)
            return usage_error("work --bad-launch-after-sync needs --path kernel");
        if (W.path == W_COOP_MULTI && opt.stream_count != 1)
            return usage_error("work --path coop-multi uses one stream per device; leave out --stream-count");
    } else if (opt.path && !is_alloc && !is_fill) {
        return usage_error("%s takes no --path", c);
    }
    if (!strcmp(c, "nvml-meminfo")) return cmd_nvml_meminfo();

    int calls = strcmp(c, "symbols") != 0;
    if (calls && opt.cuda_version < 3020)
        return usage_error("--cuda-version %d selects 32-bit entry points; only `symbols` "
                           "accepts a version below 3020",
                           opt.cuda_version);
#ifdef PROBE_DIRECT
    if (calls && (opt.ptsz || opt.cuda_version != 12080))
        fprintf(stderr, PROG ": note: --ptsz and --cuda-version only affect `symbols` in the "
                             "direct build\n");
#else
    if ((rc = load_cuda())) return rc;
#endif
    if (!calls) return cmd_symbols();

    if ((rc = cuda_setup())) return rc;
    if (!strcmp(c, "info")) return cmd_info();
    if (!strcmp(c, "meminfo")) return cmd_meminfo();
    if (is_alloc) return cmd_alloc();
    if (is_fill) return cmd_fill();
    if (!strcmp(c, "copy")) return cmd_copy();
    if (!strcmp(c, "bench-launch")) return cmd_bench_launch();
    if (!strcmp(c, "bench-alloc")) return cmd_bench_alloc();
    if (is_work) return cmd_work();
    return cmd_launch();
}
