# shellcheck shell=bash disable=SC2154,SC2015
# GPU tier: device memory taken outside allocations (sourced by tests/gpu/run.sh, which
# provides in_slice, field, pass/fail/skip, $work and the 4 GiB slice gpu-test).
#
# First a calibration printout, without the shim: what this driver really reserves for each
# context limit (after cudaDeviceSetLimit, and after a kernel launch, since a driver may
# reserve lazily), for a module per its __device__ array, for a created and a green context,
# next to what gpuslice_core::reservations charges (heap and FIFO: their value beyond the
# default, rounded to 2 MiB; stack: value × SMs × threads per SM beyond the default's;
# module: .text.*, .nv.global*, .nv.constant* sections rounded to 64 KiB; context: 256 MiB).
# Then the same paths in the slice: past the slice refused, within charged, reset gives back.

limits_checks() {
    if ! command -v nvcc >/dev/null 2>&1; then
        skip "limits, modules and green contexts" "nvcc not found"
        return
    fi
    cat >"$work/limits.cu" <<'CU'
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda.h>
#include <cuda_runtime.h>
__global__ void touch() {}
static size_t free_now() { size_t f = 0, t = 0; cudaMemGetInfo(&f, &t); return f; }
static long long taken(size_t before) { return (long long)before - (long long)free_now(); }
static int limit_of(const char *w, cudaLimit *l) {
    if (!strcmp(w, "heap")) *l = cudaLimitMallocHeapSize;
    else if (!strcmp(w, "stack")) *l = cudaLimitStackSize;
    else if (!strcmp(w, "fifo")) *l = cudaLimitPrintfFifoSize;
    else return -1;
    return 0;
}
int main(int argc, char **argv) {
    cudaFree(0);
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "limit") && argc == 4) {           /* limit heap|stack|fifo BYTES */
        cudaLimit l; size_t def = 0;
        if (limit_of(argv[2], &l)) return 2;
        cudaDeviceGetLimit(&def, l);
        int sms = 0, threads = 0;
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
        cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, 0);
        printf("sms=%d\nthreads_per_sm=%d\n", sms, threads);
        size_t before = free_now();
        cudaError_t e = cudaDeviceSetLimit(l, strtoull(argv[3], 0, 0));
        printf("default=%zu\nset_error=%s\ntaken_set=%lld\n", def, cudaGetErrorName(e), taken(before));
        cudaGetLastError();
        touch<<<1, 1>>>();
        cudaDeviceSynchronize();
        printf("taken_launched=%lld\n", taken(before));
        return 0;
    }
    if (!strcmp(cmd, "module") && argc == 3) {           /* module CUBIN */
        CUmodule m; size_t before = free_now();
        CUresult rc = cuModuleLoad(&m, argv[2]);
        printf("cu_error=%d\ntaken_loaded=%lld\n", (int)rc, taken(before));
        if (rc == CUDA_SUCCESS) { cuModuleUnload(m); printf("taken_unloaded=%lld\n", taken(before)); }
        return 0;
    }
    if (!strcmp(cmd, "contexts")) {                      /* a created context, green contexts until refused */
        CUcontext primary, c; cuCtxGetCurrent(&primary);
        size_t before = free_now();
#if CUDA_VERSION >= 13000
        CUresult rc = cuCtxCreate(&c, NULL, 0, 0); /* cuCtxCreate_v4 */
#else
        CUresult rc = cuCtxCreate(&c, 0, 0);
#endif
        cuCtxSetCurrent(primary);
        printf("ctx_error=%d\ntaken_ctx=%lld\n", (int)rc, taken(before));
        if (rc == CUDA_SUCCESS) cuCtxDestroy(c);
#if CUDA_VERSION < 12040
        printf("green=unsupported\n");
        return 0;
#else
        CUdevResource sms; CUdevResourceDesc desc;
        memset(&sms, 0, sizeof sms);
        if (cuDeviceGetDevResource(0, &sms, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS ||
            cuDevResourceGenerateDesc(&desc, &sms, 1) != CUDA_SUCCESS) { printf("green=unsupported\n"); return 0; }
        CUgreenCtx g[64]; int n = 0;
        before = free_now();
        while (n < 64 && (rc = cuGreenCtxCreate(&g[n], desc, 0, CU_GREEN_CTX_DEFAULT_STREAM)) == CUDA_SUCCESS) {
            if (n == 0) printf("taken_green=%lld\n", taken(before));
            n++;
        }
        printf("green_created=%d\ngreen_error=%d\n", n, (int)rc);
        while (n > 0) cuGreenCtxDestroy(g[--n]);
        printf("taken_green_destroyed=%lld\n", taken(before));
        return 0;
#endif
    }
    if (!strcmp(cmd, "reset") && argc == 3) {            /* reset CUBIN: a heap, a module, cudaDeviceReset */
        size_t before = free_now();
        CUmodule m;
        cudaError_t e = cudaDeviceSetLimit(cudaLimitMallocHeapSize, 512ull << 20);
        CUresult rc = cuModuleLoad(&m, argv[2]);
        printf("set_error=%s\ncu_error=%d\ntaken=%lld\n", cudaGetErrorName(e), (int)rc, taken(before));
        cudaDeviceReset();
        cudaFree(0);
        printf("taken_after_reset=%lld\n", taken(before));
        return 0;
    }
    return 2;
}
CU
    local mib=$((1 << 20)) out name resident nvarch v w value def model
    if ! nvcc -o "$work/limits" "$work/limits.cu" -lcuda >"$work/limits-build.log" 2>&1; then
        fail "nvcc limits.cu" "$(tail -n 5 "$work/limits-build.log")"
        return
    fi
    nvarch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 | tr -d ' .')
    for v in 256 3072 5120; do
        printf '__device__ char table[%dull << 20];\n__global__ void k(size_t i) { table[i] = 1; }\n' "$v" >"$work/g$v.cu"
        nvcc -cubin -arch="sm_$nvarch" -o "$work/g$v.cubin" "$work/g$v.cu" >>"$work/limits-build.log" 2>&1 ||
            fail "nvcc -cubin g$v.cu" "$(tail -n 3 "$work/limits-build.log")"
    done
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0)
    echo "gpu: calibration on $name (compute capability $nvarch), without the shim:"
    for w in heap:268435456 heap:1073741824 stack:4096 stack:16384 fifo:67108864 fifo:268435456; do
        value=${w#*:}
        out=$(CUDA_VISIBLE_DEVICES=0 "$work/limits" limit "${w%%:*}" "$value" 2>&1)
        def=$(field "$out" default)
        resident=$(($(field "$out" sms) * $(field "$out" threads_per_sm)))
        if [ "${w%%:*}" = stack ]; then
            model=$((((value * resident + 2 * mib - 1) / (2 * mib) - (def * resident + 2 * mib - 1) / (2 * mib)) * 2 * mib))
        else
            model=$((((value + 2 * mib - 1) / (2 * mib) - (def + 2 * mib - 1) / (2 * mib)) * 2 * mib))
        fi
        echo "gpu:   limit ${w%%:*} = $value (default $def, $resident resident threads): $(field "$out" set_error)," \
            "taken $(field "$out" taken_set) at the set, $(field "$out" taken_launched) after a launch; model $model"
    done
    for v in 256 3072; do
        [ -f "$work/g$v.cubin" ] || continue
        out=$(CUDA_VISIBLE_DEVICES=0 "$work/limits" module "$work/g$v.cubin" 2>&1)
        echo "gpu:   module with a $v MiB __device__ array: taken $(field "$out" taken_loaded) loaded," \
            "$(field "$out" taken_unloaded) after unloading; model $((v * mib)) + code, rounded to 64 KiB"
        command -v readelf >/dev/null && readelf -SW "$work/g$v.cubin" | grep -E '\.(text|nv\.global|nv\.constant)' | sed 's/^/gpu:     /'
    done
    out=$(CUDA_VISIBLE_DEVICES=0 "$work/limits" contexts 2>&1)
    echo "gpu:   cuCtxCreate takes $(field "$out" taken_ctx), a green context $(field "$out" taken_green)" \
        "($(field "$out" green_created) created); the shim charges $((256 * mib)) for each"

    # In the slice (4 GiB, the context charged 256 MiB).
    out=$(in_slice "$work/limits" limit heap $((8 << 30)) 2>&1)
    [ "$(field "$out" set_error)" = cudaErrorMemoryAllocation ] &&
        pass "cudaDeviceSetLimit(MallocHeapSize, 8 GiB) refused in the 4 GiB slice" || fail "8 GiB heap in the slice" "$out"
    out=$(in_slice "$work/limits" limit heap $((1 << 30)) 2>&1)
    [ "$(field "$out" set_error)" = cudaSuccess ] && [ "$(field "$out" taken_set)" -ge $((1016 * mib)) ] &&
        pass "a 1 GiB heap in the slice is charged ($(field "$out" taken_set) bytes)" || fail "1 GiB heap in the slice" "$out"
    out=$(in_slice "$work/limits" limit stack $((64 << 10)) 2>&1)
    [ "$(field "$out" set_error)" = cudaErrorMemoryAllocation ] &&
        pass "a 64 KiB stack refused in the slice" || fail "64 KiB stack in the slice" "$out"
    if [ -f "$work/g5120.cubin" ]; then
        out=$(in_slice "$work/limits" module "$work/g5120.cubin" 2>&1)
        [ "$(field "$out" cu_error)" = 2 ] && pass "a module with a 5 GiB __device__ array refused in the slice" ||
            fail "5 GiB module in the slice" "$out"
    fi
    if [ -f "$work/g3072.cubin" ]; then
        out=$(in_slice "$work/limits" module "$work/g3072.cubin" 2>&1)
        [ "$(field "$out" cu_error)" = 0 ] && [ "$(field "$out" taken_loaded)" -ge $((3072 * mib)) ] &&
            [ "$(field "$out" taken_unloaded)" -lt $((64 * mib)) ] &&
            pass "a 3 GiB module in the slice is charged until unloaded" || fail "3 GiB module in the slice" "$out"
    fi
    out=$(in_slice "$work/limits" contexts 2>&1)
    if [ "$(field "$out" green)" = unsupported ]; then
        skip "green contexts in the slice" "not supported by this driver or GPU"
    else
        [ "$(field "$out" green_error)" = 2 ] && [ "$(field "$out" green_created)" -le 15 ] &&
            pass "green contexts stop at the slice ($(field "$out" green_created) created)" || fail "green contexts in the slice" "$out"
    fi
    if [ -f "$work/g256.cubin" ]; then
        out=$(in_slice "$work/limits" reset "$work/g256.cubin" 2>&1)
        [ "$(field "$out" cu_error)" = 0 ] && [ "$(field "$out" taken_after_reset)" -lt $((16 * mib)) ] &&
            pass "cudaDeviceReset gives back a heap and a module" || fail "reset in the slice" "$out"
    fi
}
limits_checks
