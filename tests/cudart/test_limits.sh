# shellcheck shell=bash
# Device memory taken outside allocations, through NVIDIA's runtime: context limits
# (cudaDeviceSetLimit: malloc heap, stack size × resident threads, printf FIFO), modules
# (cuModuleLoadData of a cubin with a __device__ array) and libraries (cudaLibraryLoadData), and
# cudaDeviceReset giving it back. limits-check.c, built here against each runtime. The model of
# what each reserves is gpuslice_core::reservations': the simulated driver reserves it and the
# shim charges it. A 1 GiB slice on GPU 1 (256 MiB of it the context's).

LIMITS_SLICE_BYTES=$((1 << 30))
MIB=$((1 << 20))
# The simulated H100's resident threads: 132 SMs × 2048.
LIMITS_THREADS=$((132 * 2048))

# limits_build: $LIMITS, limits-check built against runtime $RT beside $CHECK (and its libcudart).
limits_build() {
    local dir root inc flags=() d
    dir=$(dirname "${CHECK:?}")
    LIMITS=$dir/limits-check
    [[ -x $LIMITS ]] && return 0
    root=$CUDART_CACHE/$RT
    IFS=: read -ra inc <<<"$(cudart_field "$RT" 3)"
    for d in "${inc[@]}"; do flags+=(-I "$root/$d"); done
    # '$ORIGIN' is for the loader, not the shell.
    # shellcheck disable=SC2016
    gcc -std=c11 -O2 -Wall -Wextra -Werror "${flags[@]}" "$CUDART_DIR/limits-check.c" \
        "$dir/$(basename "$(cudart_field "$RT" 2)")" -Xlinker -rpath -Xlinker '$ORIGIN' -o "$LIMITS" ||
        fail "building limits-check against $RT failed"
}

# limits_node: cudart_node's node, with GPU 1 split into one 1 GiB slice, "small".
limits_node() {
    [[ $(id -u) -eq 0 ]] || skip "not root (a slice's state is bind-mounted read-only in a private mount namespace)"
    require_file "$CUDART_GENERATOR" "make release"
    require_file "$CUDART_SHIM" "make release"
    [[ -x /usr/bin/unshare ]] || skip "no unshare(1)"
    mkdir -p "$T/state" "$T/view/slices" "$T/view/gpus" "$T/cdi"
    make_devroot "$T/devroot" >/dev/null
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH=/bin/true SHIM_PATH="$CUDART_SHIM" \
        DRIVER_ROOT=/ ANNOTATIONS=true
    printf '\n[[gpu]]\nindex = 1\nslices = [{ name = "small", memory = "1GiB", cores = 50 }]\n' >>"$T/gpuslice.toml"
    FAKEGPU_CONFIG=$CUDART_FAKEGPU_TOML "$CUDART_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$CUDART_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" >&2 || fail "gpuslice-cdi generate failed"
}

# limits_in_slice ARGS...: limits-check ARGS on device 1, in the 1 GiB slice.
limits_in_slice() { PROG=$LIMITS cudart_in_slice small "$@" --device 1; }

# A heap, a stack and a printf FIFO past the slice are refused (cudaDeviceSetLimit succeeded
# for a 4 GiB heap in a 1 GiB slice before), the value staying the default; within it they
# work and take what they reserve beyond the default from the slice, until set back.
test_limits_slice_limits() {
    local out which value taken
    limits_build
    limits_node
    local free=$((LIMITS_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    for which in heap:4G stack:64K fifo:4G; do
        run_ok "limit $which in the slice" out limits_in_slice limit --which "${which%%:*}" --value "${which#*:}"
        assert_eq "$which: cudaDeviceSetLimit" "$(kv set_error "$out")" cudaErrorMemoryAllocation
        assert_eq "$which: the value after the refusal" "$(kv value "$out")" "$(kv default "$out")"
        assert_eq "$which: free memory after the refusal" "$(kv free_after "$out")" "$free"
    done
    # heap 256 MiB: 248 beyond the default 8; stack 2 KiB: 1 KiB more per resident thread;
    # FIFO 64 MiB: 62 beyond the default 1 MiB (rounded to 2).
    for which in "heap:256M:$((248 * MIB))" "stack:2K:$((1024 * LIMITS_THREADS))" "fifo:64M:$((62 * MIB))"; do
        IFS=: read -r which value taken <<<"$which"
        run_ok "limit $which $value in the slice" out limits_in_slice limit --which "$which" --value "$value"
        assert_eq "$which $value: cudaDeviceSetLimit" "$(kv set_error "$out")" cudaSuccess
        assert_eq "$which $value: free memory" "$(kv free_after "$out")" $((free - taken))
        assert_eq "$which $value: free memory set back" "$(kv free_restored "$out")" "$free"
    done
}

# A module whose __device__ array does not fit is refused with CUDA_ERROR_OUT_OF_MEMORY; one
# that fits takes its globals and code (rounded to 64 KiB) until unloaded. The same for a
# library through the runtime (charged when loaded: the driver loads it lazily, later).
test_limits_slice_modules() {
    local out
    limits_build
    limits_node
    local free=$((LIMITS_SLICE_BYTES - CUDART_CONTEXT_BYTES)) module=$((256 * MIB + 64 * 1024))
    run_ok "module --global 2G in the slice" out limits_in_slice module --global 2G
    assert_eq "cuModuleLoadData of a 2 GiB __device__ array" "$(kv cu_error "$out")" 2
    assert_eq "free memory after the refusal" "$(kv free_loaded "$out")" "$free"
    run_ok "module --global 256M in the slice" out limits_in_slice module --global 256M
    assert_eq "cuModuleLoadData" "$(kv cu_error "$out")" 0
    assert_eq "free memory with the module" "$(kv free_loaded "$out")" $((free - module))
    assert_eq "free memory after cuModuleUnload" "$(kv free_unloaded "$out")" "$free"
    run_ok "library --global 2G in the slice" out limits_in_slice library --global 2G
    assert_eq "cudaLibraryLoadData of a 2 GiB __device__ array" "$(kv load_error "$out")" cudaErrorMemoryAllocation
    run_ok "library --global 256M in the slice" out limits_in_slice library --global 256M
    assert_eq "cudaLibraryLoadData" "$(kv load_error "$out")" cudaSuccess
    assert_eq "free memory with the library" "$(kv free_loaded "$out")" $((free - module))
    assert_eq "free memory after cudaLibraryUnload" "$(kv free_unloaded "$out")" "$free"
}

# cudaDeviceReset gives back what the limits and a module took (they went with the context).
test_limits_slice_reset() {
    local out
    limits_build
    limits_node
    run_ok "reset in the slice" out limits_in_slice reset --value 128M --global 128M
    # heap 120 MiB, stack 1 KiB more per thread (264 MiB), FIFO 126 MiB, module 128 MiB + 64 KiB.
    assert_eq "free memory with limits and a module" "$(kv free_taken "$out")" \
        $(($(kv free_before "$out") - (120 + 264 + 126 + 128) * MIB - 64 * 1024))
    assert_eq "free memory after cudaDeviceReset" "$(kv free_after_reset "$out")" "$(kv free_before "$out")"
    assert_eq "the heap after cudaDeviceReset" "$(kv heap_after_reset "$out")" $((8 * MIB))
}

# Without the shim, the simulated driver itself reserves the same bytes: the device's free
# memory falls by them, and a heap past the device is refused.
test_limits_device() {
    local out free=$((CUDART_GPU_BYTES - CUDART_CONTEXT_BYTES))
    limits_build
    PROG=$LIMITS run_ok "limit heap 4G" out cudart_bare limit --which heap --value 4G
    assert_eq "heap 4G: free memory" "$(kv free_after "$out")" $((free - (4096 - 8) * MIB))
    PROG=$LIMITS run_ok "limit heap 100G" out cudart_bare limit --which heap --value 100G
    assert_eq "heap 100G on an 80 GiB device" "$(kv set_error "$out")" cudaErrorMemoryAllocation
    PROG=$LIMITS run_ok "module 1G" out cudart_bare module --global 1G
    assert_eq "module 1G: free memory" "$(kv free_loaded "$out")" $((free - (1024 * MIB + 64 * 1024)))
    PROG=$LIMITS run_ok "library 1G" out cudart_bare library --global 1G
    assert_eq "library 1G: nothing reserved until used (lazy loading)" "$(kv free_loaded "$out")" "$free"
}

# Green contexts (cuGreenCtxCreate through cudaGetDriverEntryPointByVersion) take a context's
# memory each: in the 1 GiB slice, three besides the primary context fit, the fourth is
# refused with CUDA_ERROR_OUT_OF_MEMORY; destroying them gives it back.
test_limits_slice_green_contexts() {
    local out
    limits_build
    limits_node
    run_ok "green in the slice" out limits_in_slice green
    assert_eq "green contexts created" "$(kv created "$out")" 3
    assert_eq "the next cuGreenCtxCreate" "$(kv cu_error "$out")" 2
    assert_eq "free memory with them" "$(kv free_full "$out")" 0
    assert_eq "free memory after cuGreenCtxDestroy" "$(kv free_destroyed "$out")" "$(kv free_before "$out")"
}

# The runtime's own path: a fat binary registered as nvcc's host code does it
# (__cudaRegisterFatBinary), which the runtime loads with cuLibraryLoadData when it sets up the
# device. One whose __device__ array fits is charged and its kernel runs; one that does not
# fit is refused (before any context is current: charged to the process's slice).
test_limits_slice_registered() {
    local out free=$((LIMITS_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    limits_build
    limits_node
    run_ok "start --register 256M in the slice" out limits_in_slice start --register 256M
    assert_eq "start" "$(kv start_error "$out")" cudaSuccess
    assert_eq "free memory with the registered module" "$(kv free "$out")" $((free - 256 * MIB - 64 * 1024))
    assert_eq "its kernel" "$(kv launch_error "$out")" cudaSuccess
    run_ok "start --register 2G in the slice" out limits_in_slice start --register 2G
    # The runtime fails its start-up (cudaFree(0)) with the driver's CUDA_ERROR_OUT_OF_MEMORY.
    assert_eq "start with a 2 GiB __device__ array registered" "$(kv start_error "$out")" cudaErrorMemoryAllocation
}

# cuCtxCreate_v4 with an execution-affinity parameter (what cuCtxCreate is from CUDA 13) takes a
# context's memory like any context: three fit beside the primary context, the fourth is refused.
test_limits_slice_ctx_create_v4() {
    local out
    limits_build
    limits_node
    run_ok "ctx-v4 in the slice" out limits_in_slice ctx-v4
    assert_eq "contexts created" "$(kv created "$out")" 3
    assert_eq "the next cuCtxCreate_v4" "$(kv cu_error "$out")" 2
    assert_eq "free memory after cuCtxDestroy" "$(kv free_destroyed "$out")" "$(kv free_before "$out")"
}
