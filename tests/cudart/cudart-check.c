/* cudart-check: a CUDA program linked against NVIDIA's runtime (libcudart), for the cudart tier.
 *
 * Built with gcc against a runtime wheel's own headers (no nvcc): its kernels come from a fat
 * binary built here and registered with the runtime the way nvcc's generated host code does
 * (__cudaRegisterFatBinary, __cudaRegisterFunction, __cudaRegisterFatBinaryEnd in a static
 * constructor, __cudaUnregisterFatBinary at exit), and are launched through their host stubs
 * with cudaLaunchKernel & co. The fat binary holds PTX for two kernels: busy(u64 ns), which
 * spins on %globaltimer for ns nanoseconds (so the program also runs on a real GPU), and
 * idle(), which returns at once. Built with -DCUDA_API_PER_THREAD_DEFAULT_STREAM it uses the
 * per-thread default stream, as nvcc --default-stream per-thread does.
 *
 *   cudart-check devices                      count, names, memory
 *   cudart-check meminfo [--device N]         cudaMemGetInfo
 *   cudart-check alloc --path P --size S      one allocation: free memory before, during, after
 *   cudart-check fill --path P --chunk S      allocate until refused: how much, and the error
 *   cudart-check free0                        cudaFree(0)
 *   cudart-check kernel --path K --ns N       one busy(N) kernel, timed with events
 *   cudart-check sync2 --ns N                 kernels on two devices, cudaDeviceSynchronize each
 *   cudart-check sync-thread --ns N           a kernel, then cudaDeviceSynchronize on another thread
 *   cudart-check ctx-sync --ns N              a kernel in a second context, cuCtxSynchronize_v2 of it
 *   cudart-check reset                        cudaDeviceReset gives memory back, CUDA works after
 *   cudart-check work --ns N --seconds S      busy kernels back to back: the share of the GPU
 *
 * Allocation paths P: malloc, managed, pitch, array3d, async (cudaMallocAsync), pool
 * (cudaMallocFromPoolAsync). Kernel paths K: default (the default stream), stream (a created
 * stream), ex (cudaLaunchKernelExC), cooperative, graph (cudaGraphAddKernelNode), capture (a
 * stream captured into a graph), tograph (a launch, then cudaStreamBeginCaptureToGraph into a
 * created graph), idle (the idle kernel on the default stream).
 * Output: key=value lines. On failure: error=<cudaError name>, call=<what failed>, exit 1.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include "check.h"

/* ---- the fat binary and its registration (what nvcc generates) --------------------------- */

extern void **__cudaRegisterFatBinary(void *fatCubin);
extern void __cudaRegisterFatBinaryEnd(void **fatCubinHandle);
extern void __cudaUnregisterFatBinary(void **fatCubinHandle);
extern void __cudaRegisterFunction(void **fatCubinHandle, const char *hostFun, char *deviceFun, const char *deviceName,
                                   int thread_limit, uint3 *tid, uint3 *bid, dim3 *bDim, dim3 *gDim, int *wSize);

static const char kernels_ptx[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    "\n"
    ".visible .entry _Z4busyy(\n"
    "\t.param .u64 _Z4busyy_param_0\n"
    ")\n"
    "{\n"
    "\t.reg .pred %p<2>;\n"
    "\t.reg .b64 %rd<5>;\n"
    "\n"
    "\tld.param.u64 %rd1, [_Z4busyy_param_0];\n"
    "\tmov.u64 %rd2, %globaltimer;\n"
    "$L__spin:\n"
    "\tmov.u64 %rd3, %globaltimer;\n"
    "\tsub.s64 %rd4, %rd3, %rd2;\n"
    "\tsetp.lt.u64 %p1, %rd4, %rd1;\n"
    "\t@%p1 bra $L__spin;\n"
    "\tret;\n"
    "}\n"
    "\n"
    ".visible .entry _Z4idlev()\n"
    "{\n"
    "\tret;\n"
    "}\n";

/* fatbinary_section.h's wrapper, and the fat binary: a 16-byte header, then one entry (a
 * 64-byte header and the PTX, NUL-padded to 8 bytes). */
typedef struct {
    int magic;
    int version;
    const unsigned long long *data;
    void *filename_or_fatbins;
} fatbin_wrapper;

struct fatbin_entry {
    uint16_t kind; /* 1: PTX, 2: ELF */
    uint16_t version;
    uint32_t header_size;
    uint64_t payload_size;
    uint32_t compressed_size;
    uint32_t reserved0;
    uint16_t ptx_minor, ptx_major;
    uint32_t arch;
    uint32_t name_offset, name_size;
    uint64_t flags; /* 0x1: 64-bit, 0x10: Linux */
    uint64_t reserved1;
    uint64_t uncompressed_size;
};

#define PTX_PADDED ((sizeof kernels_ptx + 7) & ~(size_t)7)
static struct {
    uint32_t magic;
    uint16_t version, header_size;
    uint64_t files_size;
    struct fatbin_entry entry;
    char ptx[PTX_PADDED];
} __attribute__((aligned(8))) fatbin;

static fatbin_wrapper fatbin_text = {0x466243B1, 1, (const unsigned long long *)&fatbin, NULL};
static void **fatbin_handle;

/* The host stubs: their addresses name the kernels to the runtime. */
static void busy(unsigned long long ns) { (void)ns; }
static void idle(void) {}

static void unregister_kernels(void) { __cudaUnregisterFatBinary(fatbin_handle); }

__attribute__((constructor)) static void register_kernels(void) {
    fatbin.magic = 0xBA55ED50;
    fatbin.version = 1;
    fatbin.header_size = 16;
    fatbin.files_size = sizeof fatbin.entry + sizeof fatbin.ptx;
    fatbin.entry = (struct fatbin_entry){.kind = 1,
                                         .version = 0x0101,
                                         .header_size = sizeof fatbin.entry,
                                         .payload_size = sizeof fatbin.ptx,
                                         .ptx_minor = 0,
                                         .ptx_major = 6,
                                         .arch = 50,
                                         .flags = 0x11,
                                         .uncompressed_size = sizeof fatbin.ptx};
    memcpy(fatbin.ptx, kernels_ptx, sizeof kernels_ptx);
    fatbin_handle = __cudaRegisterFatBinary(&fatbin_text);
    __cudaRegisterFunction(fatbin_handle, (const char *)busy, (char *)"_Z4busyy", "_Z4busyy", -1, NULL, NULL, NULL,
                           NULL, NULL);
    __cudaRegisterFunction(fatbin_handle, (const char *)idle, (char *)"_Z4idlev", "_Z4idlev", -1, NULL, NULL, NULL,
                           NULL, NULL);
    __cudaRegisterFatBinaryEnd(fatbin_handle);
    atexit(unregister_kernels);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static struct {
    const char *path;
    unsigned long long size, chunk, ns;
    double seconds;
    int device, sync_every;
} opt = {.path = "", .size = 1 << 20, .chunk = 1 << 30, .ns = 1000000, .seconds = 3, .sync_every = 16};

static int fail(const char *call, cudaError_t e) {
    printf("error=%s\ncall=%s\n", cudaGetErrorName(e), call);
    fprintf(stderr, "cudart-check: %s: %s (%d): %s\n", call, cudaGetErrorName(e), (int)e, cudaGetErrorString(e));
    return 1;
}

#define CK(call)                                                                                                   \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess) return fail(#call, e_);                                                             \
    } while (0)

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- allocations -------------------------------------------------------------------------- */

enum { MAX_ALLOCS = 4096 };
struct allocation {
    void *ptr;
    cudaArray_t array;
};
static cudaStream_t alloc_stream;
static cudaMemPool_t alloc_pool;

/* One allocation of about `size` bytes through opt.path. */
static cudaError_t alloc_one(unsigned long long size, struct allocation *a, const char **call) {
    const char *p = opt.path;
    a->ptr = NULL;
    a->array = NULL;
    if (!strcmp(p, "malloc")) {
        *call = "cudaMalloc";
        return cudaMalloc(&a->ptr, size);
    }
    if (!strcmp(p, "managed")) {
        *call = "cudaMallocManaged";
        return cudaMallocManaged(&a->ptr, size, cudaMemAttachGlobal);
    }
    if (!strcmp(p, "pitch")) {
        size_t pitch;
        *call = "cudaMallocPitch";
        return cudaMallocPitch(&a->ptr, &pitch, 65536, size / 65536 ? size / 65536 : 1);
    }
    if (!strcmp(p, "array3d")) {
        /* 1024 x 1024 floats per layer: 4 MiB. */
        struct cudaChannelFormatDesc desc = cudaCreateChannelDesc(32, 0, 0, 0, cudaChannelFormatKindFloat);
        struct cudaExtent extent = {1024, 1024, size >> 22 ? size >> 22 : 1};
        *call = "cudaMalloc3DArray";
        return cudaMalloc3DArray(&a->array, &desc, extent, 0);
    }
    if (!strcmp(p, "async")) {
        *call = "cudaMallocAsync";
        return cudaMallocAsync(&a->ptr, size, alloc_stream);
    }
    if (!strcmp(p, "pool")) {
        *call = "cudaMallocFromPoolAsync";
        return cudaMallocFromPoolAsync(&a->ptr, size, alloc_pool, alloc_stream);
    }
    *call = "unknown --path";
    return cudaErrorInvalidValue;
}

static cudaError_t free_one(struct allocation *a) {
    if (a->array) return cudaFreeArray(a->array);
    if (!strcmp(opt.path, "async") || !strcmp(opt.path, "pool")) {
        cudaError_t e = cudaFreeAsync(a->ptr, alloc_stream);
        return e != cudaSuccess ? e : cudaStreamSynchronize(alloc_stream);
    }
    return cudaFree(a->ptr);
}

static int alloc_setup(void) {
    CK(cudaSetDevice(opt.device));
    CK(cudaStreamCreate(&alloc_stream));
    if (!strcmp(opt.path, "pool")) {
        struct cudaMemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = opt.device;
        CK(cudaMemPoolCreate(&alloc_pool, &props));
    }
    return 0;
}

/* Trim the pools, so that what the async paths freed is given back to the device. */
static int alloc_teardown(void) {
    if (!strcmp(opt.path, "async")) {
        cudaMemPool_t pool;
        CK(cudaDeviceGetDefaultMemPool(&pool, opt.device));
        CK(cudaMemPoolTrimTo(pool, 0));
    }
    if (alloc_pool) CK(cudaMemPoolDestroy(alloc_pool));
    CK(cudaStreamDestroy(alloc_stream));
    return 0;
}

static int cmd_alloc(void) {
    struct allocation a;
    const char *call = "";
    if (alloc_setup()) return 1;
    size_t before = free_now();
    cudaError_t e = alloc_one(opt.size, &a, &call);
    if (e != cudaSuccess) return fail(call, e);
    size_t during = free_now();
    CK(free_one(&a));
    if (alloc_teardown()) return 1;
    printf("free_before=%zu\nfree_during=%zu\nfree_after=%zu\ntaken=%lld\n", before, during, free_now(),
           (long long)before - (long long)during);
    return 0;
}

static int cmd_fill(void) {
    static struct allocation all[MAX_ALLOCS];
    unsigned long long allocated = 0;
    int n = 0;
    const char *call = "";
    cudaError_t e = cudaSuccess;
    if (alloc_setup()) return 1;
    size_t total = 0, before = 0;
    CK(cudaMemGetInfo(&before, &total));
    while (n < MAX_ALLOCS && (e = alloc_one(opt.chunk, &all[n], &call)) == cudaSuccess) {
        allocated += opt.chunk;
        n++;
    }
    size_t at_stop = free_now();
    printf("chunks=%d\nallocated=%llu\ntotal=%zu\nfree_before=%zu\nfree_at_stop=%zu\n", n, allocated, total, before,
           at_stop);
    printf("stop_error=%s\nstop_call=%s\n", cudaGetErrorName(e), call);
    /* The runtime keeps the error sticky for cudaGetLastError; an allocation failure is not a
     * context error, so the program goes on. */
    (void)cudaGetLastError();
    for (int i = 0; i < n; i++) CK(free_one(&all[i]));
    if (alloc_teardown()) return 1;
    printf("free_after=%zu\n", free_now());
    return 0;
}

/* ---- kernels ------------------------------------------------------------------------------ */

/* Launch busy(ns) (or idle) on `s` through opt.path; graphs are built, launched and freed here. */
static cudaError_t launch(cudaStream_t s, unsigned long long ns, const char **call) {
    void *args[] = {&ns};
    const char *p = opt.path;
    dim3 one = {1, 1, 1};
    if (!strcmp(p, "default") || !strcmp(p, "stream")) {
        *call = "cudaLaunchKernel";
        return cudaLaunchKernel((const void *)busy, one, one, args, 0, s);
    }
    if (!strcmp(p, "idle")) {
        *call = "cudaLaunchKernel(idle)";
        return cudaLaunchKernel((const void *)idle, one, one, NULL, 0, s);
    }
    if (!strcmp(p, "ex")) {
        cudaLaunchConfig_t config;
        memset(&config, 0, sizeof config);
        config.gridDim = one;
        config.blockDim = one;
        config.stream = s;
        *call = "cudaLaunchKernelExC";
        return cudaLaunchKernelExC(&config, (const void *)busy, args);
    }
    if (!strcmp(p, "cooperative")) {
        *call = "cudaLaunchCooperativeKernel";
        return cudaLaunchCooperativeKernel((const void *)busy, one, one, args, 0, s);
    }
    if (!strcmp(p, "graph") || !strcmp(p, "capture") || !strcmp(p, "tograph")) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        cudaError_t e;
        if (!strcmp(p, "graph")) {
            struct cudaKernelNodeParams params = {(void *)busy, one, one, 0, args, NULL};
            cudaGraphNode_t node;
            *call = "cudaGraphCreate";
            if ((e = cudaGraphCreate(&graph, 0)) != cudaSuccess) return e;
            *call = "cudaGraphAddKernelNode";
            if ((e = cudaGraphAddKernelNode(&node, graph, NULL, 0, &params)) != cudaSuccess) return e;
        } else if (!strcmp(p, "tograph")) {
            /* A launch first, so that the stream has work (and the pacing a window) when the
             * capture into an existing graph starts. */
            *call = "cudaLaunchKernel";
            if ((e = cudaLaunchKernel((const void *)busy, one, one, args, 0, s)) != cudaSuccess) return e;
            *call = "cudaGraphCreate";
            if ((e = cudaGraphCreate(&graph, 0)) != cudaSuccess) return e;
            *call = "cudaStreamBeginCaptureToGraph";
            e = cudaStreamBeginCaptureToGraph(s, graph, NULL, NULL, 0, cudaStreamCaptureModeGlobal);
            if (e != cudaSuccess) return e;
            *call = "cudaLaunchKernel (captured)";
            if ((e = cudaLaunchKernel((const void *)busy, one, one, args, 0, s)) != cudaSuccess) return e;
            /* A launch on another stream meanwhile: whatever it does, nothing of it may land in
             * the graph being captured. */
            cudaStream_t other;
            *call = "cudaStreamCreateWithFlags";
            if ((e = cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking)) != cudaSuccess) return e;
            *call = "cudaLaunchKernel (another stream)";
            if ((e = cudaLaunchKernel((const void *)idle, one, one, NULL, 0, other)) != cudaSuccess) return e;
            *call = "cudaStreamEndCapture";
            if ((e = cudaStreamEndCapture(s, &graph)) != cudaSuccess) return e;
            size_t nodes = 0;
            *call = "cudaGraphGetNodes";
            if ((e = cudaGraphGetNodes(graph, NULL, &nodes)) != cudaSuccess) return e;
            printf("captured_nodes=%zu\n", nodes);
            *call = "cudaStreamDestroy";
            if ((e = cudaStreamDestroy(other)) != cudaSuccess) return e;
        } else {
            *call = "cudaStreamBeginCapture";
            if ((e = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal)) != cudaSuccess) return e;
            *call = "cudaLaunchKernel (captured)";
            if ((e = cudaLaunchKernel((const void *)busy, one, one, args, 0, s)) != cudaSuccess) return e;
            *call = "cudaStreamEndCapture";
            if ((e = cudaStreamEndCapture(s, &graph)) != cudaSuccess) return e;
        }
        *call = "cudaGraphInstantiate";
        if ((e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess) return e;
        *call = "cudaGraphLaunch";
        if ((e = cudaGraphLaunch(exec, s)) != cudaSuccess) return e;
        *call = "cudaGraphExecDestroy";
        if ((e = cudaGraphExecDestroy(exec)) != cudaSuccess) return e;
        *call = "cudaGraphDestroy";
        return cudaGraphDestroy(graph);
    }
    *call = "unknown --path";
    return cudaErrorInvalidValue;
}

/* The default stream for "default", "ex", "cooperative" and "idle"; a created stream otherwise
 * (capture cannot use the legacy default stream). */
static int kernel_stream(cudaStream_t *s) {
    *s = 0;
    if (!strcmp(opt.path, "stream") || !strcmp(opt.path, "graph") || !strcmp(opt.path, "capture") ||
        !strcmp(opt.path, "tograph"))
        CK(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking));
    return 0;
}

static int cmd_kernel(void) {
    cudaStream_t s;
    cudaEvent_t start, end;
    const char *call = "";
    float ms = 0;
    CK(cudaSetDevice(opt.device));
    if (kernel_stream(&s)) return 1;
    CK(cudaEventCreate(&start));
    CK(cudaEventCreate(&end));
    uint64_t t0 = now_ns();
    CK(cudaEventRecord(start, s));
    cudaError_t e = launch(s, opt.ns, &call);
    if (e != cudaSuccess) return fail(call, e);
    CK(cudaEventRecord(end, s));
    uint64_t launched = now_ns();
    CK(cudaEventSynchronize(end));
    uint64_t done = now_ns();
    CK(cudaEventElapsedTime(&ms, start, end));
    CK(cudaDeviceSynchronize());
    printf("launch_ns=%" PRIu64 "\nwall_ns=%" PRIu64 "\nelapsed_ms=%.3f\n", launched - t0, done - t0, ms);
    CK(cudaEventDestroy(start));
    CK(cudaEventDestroy(end));
    if (s) CK(cudaStreamDestroy(s));
    return 0;
}

/* busy(ns) on device 0 and busy(ns / 4) on device 1, each on its device's default stream; then
 * cudaDeviceSynchronize on device 1 (which must not wait for device 0's kernel) and on device 0. */
static int cmd_sync2(void) {
    const char *call = "";
    int count;
    CK(cudaGetDeviceCount(&count));
    if (count < 2) return fail("cudaGetDeviceCount (needs 2 devices)", cudaErrorInvalidDevice);
    opt.path = "default";
    CK(cudaSetDevice(0));
    CK(cudaFree(0)); /* start both contexts before timing */
    CK(cudaSetDevice(1));
    CK(cudaFree(0));
    uint64_t t0 = now_ns();
    CK(cudaSetDevice(0));
    cudaError_t e = launch(0, opt.ns, &call);
    if (e != cudaSuccess) return fail(call, e);
    CK(cudaSetDevice(1));
    if ((e = launch(0, opt.ns / 4, &call)) != cudaSuccess) return fail(call, e);
    CK(cudaDeviceSynchronize());
    uint64_t t1 = now_ns();
    CK(cudaSetDevice(0));
    CK(cudaDeviceSynchronize());
    uint64_t t0done = now_ns();
    printf("device1_sync_ns=%" PRIu64 "\ndevice0_sync_ns=%" PRIu64 "\n", t1 - t0, t0done - t0);
    return 0;
}

/* busy(ns) on device 0 from this thread, then cudaDeviceSynchronize on a new thread that has
 * done nothing else with CUDA: it must wait for the kernel (the device's work, whichever thread
 * queued it). */
static cudaError_t thread_sync_error;
static uint64_t thread_sync_done;

static void *sync_from_thread(void *arg) {
    (void)arg;
    thread_sync_error = cudaDeviceSynchronize();
    thread_sync_done = now_ns();
    return NULL;
}

static int cmd_sync_thread(void) {
    const char *call = "";
    pthread_t t;
    opt.path = "default";
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    uint64_t t0 = now_ns();
    cudaError_t e = launch(0, opt.ns, &call);
    if (e != cudaSuccess) return fail(call, e);
    if (pthread_create(&t, NULL, sync_from_thread, NULL) != 0) return fail("pthread_create", cudaErrorUnknown);
    pthread_join(t, NULL);
    if (thread_sync_error != cudaSuccess) return fail("cudaDeviceSynchronize (other thread)", thread_sync_error);
    printf("thread_sync_ns=%" PRIu64 "\n", thread_sync_done - t0);
    CK(cudaDeviceSynchronize());
    return 0;
}

/* Two contexts on device 0: the primary one and one made with cuCtxCreate (driver entry points
 * through cudaGetDriverEntryPointByVersion). busy(ns) runs in the second; then, with the primary
 * context current, cuCtxSynchronize as CUDA 13 defines it (cuCtxSynchronize_v2, which takes the
 * context to wait for) is called for the second: it must wait for that kernel. */
typedef int CUresult_t;
typedef void *CUctx;

static int entry(const char *name, unsigned version, void **fn) {
    enum cudaDriverEntryPointQueryResult status;
    CK(cudaGetDriverEntryPointByVersion(name, fn, version, cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || !*fn) return fail(name, cudaErrorSymbolNotFound);
    return 0;
}

static int cmd_ctx_sync(void) {
    CUresult_t (*create)(CUctx *, unsigned, int), (*pop)(CUctx *), (*destroy)(CUctx), (*sync_v2)(CUctx);
    const char *call = "";
    CUctx other, popped;
    opt.path = "default";
    if (entry("cuCtxCreate", 3020, (void **)&create) || entry("cuCtxPopCurrent", 4000, (void **)&pop) ||
        entry("cuCtxDestroy", 4000, (void **)&destroy) || entry("cuCtxSynchronize", 13000, (void **)&sync_v2))
        return 1;
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    if (create(&other, 0, 0) != 0) return fail("cuCtxCreate", cudaErrorUnknown);
    cudaError_t e = launch(0, opt.ns, &call);
    if (e != cudaSuccess) return fail(call, e);
    if (pop(&popped) != 0 || popped != other) return fail("cuCtxPopCurrent", cudaErrorUnknown);
    uint64_t t0 = now_ns();
    int r = sync_v2(other);
    uint64_t t1 = now_ns();
    if (r != 0) return fail("cuCtxSynchronize_v2(the other context)", (cudaError_t)r);
    printf("ctx_sync_ns=%" PRIu64 "\n", t1 - t0);
    if (destroy(other) != 0) return fail("cuCtxDestroy", cudaErrorUnknown);
    return 0;
}

/* 1 GiB and a kernel, then cudaDeviceReset: the memory comes back, and allocations and kernels
 * work again afterwards (the runtime sets the device up anew). */
static int cmd_reset(void) {
    void *p;
    const char *call = "";
    opt.path = "default";
    CK(cudaSetDevice(opt.device));
    size_t before = free_now();
    CK(cudaMalloc(&p, 1 << 30));
    cudaError_t e = launch(0, opt.ns, &call);
    if (e != cudaSuccess) return fail(call, e);
    size_t during = free_now();
    CK(cudaDeviceReset());
    size_t after = free_now();
    CK(cudaMalloc(&p, 1 << 20));
    if ((e = launch(0, opt.ns, &call)) != cudaSuccess) return fail(call, e);
    CK(cudaDeviceSynchronize());
    CK(cudaFree(p));
    CK(cudaDeviceReset());
    printf("free_before=%zu\nfree_during=%zu\nfree_after_reset=%zu\n", before, during, after);
    return 0;
}

/* Busy kernels back to back on the default stream for opt.seconds, synchronising every
 * opt.sync_every: the share of wall time the device spent on them. */
static int cmd_work(void) {
    const char *call = "";
    unsigned long long launched = 0;
    opt.path = "default";
    CK(cudaSetDevice(opt.device));
    CK(cudaFree(0));
    uint64_t t0 = now_ns(), limit = (uint64_t)(opt.seconds * 1e9);
    while (now_ns() - t0 < limit) {
        cudaError_t e = launch(0, opt.ns, &call);
        if (e != cudaSuccess) return fail(call, e);
        if (++launched % (unsigned)opt.sync_every == 0) CK(cudaStreamSynchronize(0));
    }
    CK(cudaStreamSynchronize(0));
    uint64_t wall = now_ns() - t0;
    printf("kernels=%llu\nwall_ns=%" PRIu64 "\nshare_pct=%.1f\n", launched, wall,
           100.0 * (double)(launched * opt.ns) / (double)wall);
    return 0;
}

static int cmd_devices(void) {
    int count, version = 0, runtime = 0;
    CK(cudaGetDeviceCount(&count));
    CK(cudaDriverGetVersion(&version));
    CK(cudaRuntimeGetVersion(&runtime));
    printf("count=%d\ndriver_version=%d\nruntime_version=%d\n", count, version, runtime);
    for (int i = 0; i < count; i++) {
        struct cudaDeviceProp prop;
        CK(cudaGetDeviceProperties(&prop, i));
        printf("name%d=%s\ntotal%d=%zu\nsm%d=%d\ncc%d=%d.%d\n", i, prop.name, i, prop.totalGlobalMem, i,
               prop.multiProcessorCount, i, prop.major, prop.minor);
    }
    return 0;
}

static int cmd_meminfo(void) {
    size_t f, t;
    CK(cudaSetDevice(opt.device));
    CK(cudaMemGetInfo(&f, &t));
    printf("free=%zu\ntotal=%zu\n", f, t);
    return 0;
}

static int cmd_free0(void) {
    CK(cudaFree(0));
    CK(cudaFree(NULL));
    printf("free0=ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cudart-check devices|meminfo|alloc|fill|free0|kernel|sync2|sync-thread|ctx-sync|reset|work "
                        "[options]\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "cudart-check: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--path")) opt.path = v;
        else if (!strcmp(a, "--size")) opt.size = parse_size(v);
        else if (!strcmp(a, "--chunk")) opt.chunk = parse_size(v);
        else if (!strcmp(a, "--ns")) opt.ns = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--seconds")) opt.seconds = strtod(v, NULL);
        else if (!strcmp(a, "--device")) opt.device = atoi(v);
        else if (!strcmp(a, "--sync-every")) opt.sync_every = atoi(v) > 0 ? atoi(v) : 1;
        else {
            fprintf(stderr, "cudart-check: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "devices")) return cmd_devices();
    if (!strcmp(cmd, "meminfo")) return cmd_meminfo();
    if (!strcmp(cmd, "alloc")) return cmd_alloc();
    if (!strcmp(cmd, "fill")) return cmd_fill();
    if (!strcmp(cmd, "free0")) return cmd_free0();
    if (!strcmp(cmd, "kernel")) return cmd_kernel();
    if (!strcmp(cmd, "sync2")) return cmd_sync2();
    if (!strcmp(cmd, "sync-thread")) return cmd_sync_thread();
    if (!strcmp(cmd, "ctx-sync")) return cmd_ctx_sync();
    if (!strcmp(cmd, "reset")) return cmd_reset();
    if (!strcmp(cmd, "work")) return cmd_work();
    fprintf(stderr, "cudart-check: unknown command %s\n", cmd);
    return 2;
}
