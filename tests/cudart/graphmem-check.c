/* graphmem-check: graph memory and stream-ordered frees through NVIDIA's CUDA runtime, on
 * device 0. Built by tests/cudart/test_graphmem.sh against each runtime of the tier (as
 * cudart-check is) and by tests/gpu/graphmem.sh with nvcc. Every step prints KEY=VALUE (a
 * call's outcome as its error name, memory in bytes); the program fails only when it cannot
 * run at all, so the caller judges what was refused.
 *
 *   graphmem-check node SIZE [params]   a graph with an alloc node of SIZE bytes and its free
 *                                       node: instantiate (params: cudaGraphInstantiateWithParams
 *                                       with the upload flag), upload, launch twice, trim
 *   graphmem-check capture SIZE         the same graph captured from a stream
 *                                       (cudaMallocAsync + cudaFreeAsync)
 *   graphmem-check trim SIZE PLAIN      a graph of SIZE launched, then cudaMalloc(PLAIN) before
 *                                       and after cudaDeviceGraphMemTrim
 *   graphmem-check freeasync SIZE [device]
 *                                       cudaMallocAsync + cudaFreeAsync of SIZE, then
 *                                       cudaMalloc(SIZE) after cudaStreamSynchronize (device:
 *                                       cudaDeviceSynchronize)
 *
 * SIZE: bytes, or with a K, M or G suffix.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"

static unsigned long long graph_attr(enum cudaGraphMemAttributeType attr) {
    unsigned long long v = 0;
    if (cudaDeviceGetGraphMemAttribute(0, attr, &v) != cudaSuccess) return ~0ull;
    return v;
}

static void report(const char *key, cudaError_t e) {
    printf("%s=%s\n", key, cudaGetErrorName(e));
    (void)cudaGetLastError();
}

/* A graph whose alloc node takes `size` bytes and whose free node gives them back. */
static cudaError_t node_graph(unsigned long long size, cudaGraph_t *graph) {
    struct cudaMemAllocNodeParams p;
    cudaGraphNode_t alloc, free_node;
    cudaError_t e;
    memset(&p, 0, sizeof p);
    p.poolProps.allocType = cudaMemAllocationTypePinned;
    p.poolProps.location.type = cudaMemLocationTypeDevice;
    p.poolProps.location.id = 0;
    p.bytesize = size;
    if ((e = cudaGraphCreate(graph, 0)) != cudaSuccess) return e;
    if ((e = cudaGraphAddMemAllocNode(&alloc, *graph, NULL, 0, &p)) != cudaSuccess) return e;
    return cudaGraphAddMemFreeNode(&free_node, *graph, &alloc, 1, p.dptr);
}

/* The same, captured from `s`. */
static cudaError_t captured_graph(unsigned long long size, cudaStream_t s, cudaGraph_t *graph) {
    void *p = NULL;
    cudaError_t e;
    if ((e = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal)) != cudaSuccess) return e;
    e = cudaMallocAsync(&p, size, s);
    report("capture_alloc", e);
    if (e == cudaSuccess) report("capture_free", cudaFreeAsync(p, s));
    return cudaStreamEndCapture(s, graph);
}

/* Instantiate, upload, launch (twice) and trim `graph`, printing each outcome. */
static void run_graph(cudaGraph_t graph, cudaStream_t s, int params) {
    cudaGraphExec_t exec = NULL;
    cudaError_t e;
    printf("free_before=%zu\n", free_now());
    if (params) {
        cudaGraphInstantiateParams ip;
        memset(&ip, 0, sizeof ip);
        ip.flags = cudaGraphInstantiateFlagUpload;
        ip.uploadStream = s;
        e = cudaGraphInstantiateWithParams(&exec, graph, &ip);
    } else {
        e = cudaGraphInstantiate(&exec, graph, 0);
    }
    report("instantiate", e);
    if (e != cudaSuccess) return;
    printf("free_after_instantiate=%zu\n", free_now());
    report("upload", cudaGraphUpload(exec, s));
    report("launch", cudaGraphLaunch(exec, s));
    report("sync", cudaStreamSynchronize(s));
    report("relaunch", cudaGraphLaunch(exec, s));
    report("sync", cudaStreamSynchronize(s));
    printf("reserved=%llu\n", graph_attr(cudaGraphMemAttrReservedMemCurrent));
    printf("reserved_high=%llu\n", graph_attr(cudaGraphMemAttrReservedMemHigh));
    printf("free_after_launch=%zu\n", free_now());
    report("exec_destroy", cudaGraphExecDestroy(exec));
    report("trim", cudaDeviceGraphMemTrim(0));
    printf("reserved_after_trim=%llu\n", graph_attr(cudaGraphMemAttrReservedMemCurrent));
    printf("free_after_trim=%zu\n", free_now());
}

static void try_malloc(const char *key, unsigned long long size) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size);
    report(key, e);
    if (e == cudaSuccess) cudaFree(p);
}

int main(int argc, char **argv) {
    cudaStream_t s;
    cudaGraph_t graph = NULL;
    cudaError_t e;
    if (argc < 3) {
        fprintf(stderr, "usage: graphmem-check node|capture|trim|freeasync SIZE [params|PLAIN]\n");
        return 2;
    }
    const char *cmd = argv[1];
    unsigned long long size = parse_size(argv[2]);
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaFree(0)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)) != cudaSuccess) {
        fprintf(stderr, "graphmem-check: start: %s\n", cudaGetErrorName(e));
        return 1;
    }
    if (!strcmp(cmd, "node") || !strcmp(cmd, "capture")) {
        e = !strcmp(cmd, "node") ? node_graph(size, &graph) : captured_graph(size, s, &graph);
        report("graph", e);
        if (e == cudaSuccess) run_graph(graph, s, argc > 3 && !strcmp(argv[3], "params"));
    } else if (!strcmp(cmd, "trim") && argc > 3) {
        cudaGraphExec_t exec;
        if ((e = node_graph(size, &graph)) != cudaSuccess || (e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess) {
            fprintf(stderr, "graphmem-check: graph: %s\n", cudaGetErrorName(e));
            return 1;
        }
        report("launch", cudaGraphLaunch(exec, s));
        report("sync", cudaStreamSynchronize(s));
        try_malloc("malloc_before_trim", parse_size(argv[3]));
        report("trim", cudaDeviceGraphMemTrim(0));
        try_malloc("malloc_after_trim", parse_size(argv[3]));
        report("exec_destroy", cudaGraphExecDestroy(exec));
    } else if (!strcmp(cmd, "freeasync")) {
        void *p = NULL;
        printf("free_before=%zu\n", free_now());
        report("malloc_async", e = cudaMallocAsync(&p, size, s));
        if (e == cudaSuccess) report("free_async", cudaFreeAsync(p, s));
        printf("free_before_sync=%zu\n", free_now());
        report("sync", argc > 3 && !strcmp(argv[3], "device") ? cudaDeviceSynchronize() : cudaStreamSynchronize(s));
        printf("free_after_sync=%zu\n", free_now());
        try_malloc("malloc_after_sync", size);
    } else {
        fprintf(stderr, "graphmem-check: unknown command %s\n", cmd);
        return 2;
    }
    if (graph) cudaGraphDestroy(graph);
    return 0;
}
