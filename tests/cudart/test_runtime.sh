# shellcheck shell=bash
# NVIDIA's runtime on the simulated GPU alone (no shim): the numbers are the device's. Two
# 80 GiB GPUs (tests/e2e/fixtures/fakegpu.toml); every CUDA context takes 256 MiB.

# The runtime starts (private export tables, integrity check) and sees both GPUs.
test_devices() {
    local out
    run_ok "cudart-check devices" out cudart_bare devices
    assert_eq "cudaGetDeviceCount" "$(kv count "$out")" 2
    assert_eq "cudaRuntimeGetVersion" "$(kv runtime_version "$out")" \
        "$(awk -F. '{print $1 * 1000 + $2 * 10}' <<<"$RT")"
    assert_eq "cudaDriverGetVersion" "$(kv driver_version "$out")" 13000
    assert_eq "device 0's name" "$(kv name0 "$out")" "NVIDIA H100 80GB HBM3 (simulated)"
    assert_eq "device 1's memory" "$(kv total1 "$out")" "$CUDART_GPU_BYTES"
    assert_eq "device 0's SMs" "$(kv sm0 "$out")" 132
    assert_eq "device 0's compute capability" "$(kv cc0 "$out")" 9.0
}

test_meminfo() {
    local out
    run_ok "cudart-check meminfo" out cudart_bare meminfo
    assert_eq "cudaMemGetInfo total" "$(kv total "$out")" "$CUDART_GPU_BYTES"
    assert_eq "cudaMemGetInfo free (the context's 256 MiB taken)" "$(kv free "$out")" \
        $((CUDART_GPU_BYTES - CUDART_CONTEXT_BYTES))
}

# cudaFree(0) starts the runtime: the driver gets cuMemFree_v2(0) and must accept it.
test_free0() {
    local out
    run_ok "cudart-check free0" out cudart_bare free0
    assert_line_in free0=ok "$out"
}

# Every allocation path takes what it asks for from the device and gives it back.
test_allocation_paths() {
    local out path
    for path in malloc managed pitch array3d async pool; do
        run_ok "cudart-check alloc --path $path" out cudart_bare alloc --path "$path" --size 1G
        assert_eq "$path: bytes taken" "$(kv taken "$out")" $((1 << 30))
        assert_eq "$path: free memory after the free" "$(kv free_after "$out")" "$(kv free_before "$out")"
    done
}

# assert_kernel_ms OUTPUT MS: the kernel took MS of device time between its events (and the
# launch itself returned at once).
assert_kernel_ms() {
    assert_between "device time between the events (ms)" "$(kv elapsed_ms "$1")" "$2" "$(($2 + 15))"
    assert_between "cudaLaunchKernel's own time (ns)" "$(kv launch_ns "$1")" 0 $(($2 * 500000))
}

# busy(100 ms) through every launch path, on the legacy and on the per-thread default stream:
# 100 ms of device time between the events around it. Kernels other than busy take 5 µs.
test_kernels() {
    local out path check
    for check in "${CHECK:?}" "${CHECK_PTDS:?}"; do
        for path in default stream ex cooperative graph capture; do
            PROG=$check run_ok "${check##*/} kernel --path $path" out cudart_bare kernel --path "$path" --ns 100000000
            assert_kernel_ms "$out" 100
        done
        PROG=$check run_ok "${check##*/} kernel --path idle" out cudart_bare kernel --path idle
        assert_between "the idle kernel's device time (ms)" "$(kv elapsed_ms "$out")" 0.005 5
    done
}

# The per-thread build (nvcc --default-stream per-thread) reaches the driver's _ptsz entry points.
test_per_thread_default_stream() {
    local out
    PROG=$CHECK_PTDS FAKEGPU_TRACE=1 run_ok "cudart-check-ptds kernel" out cudart_bare kernel --path default --ns 1000000
    grep -qE '^fakegpu: cuLaunchKernel_ptsz = 0$' <<<"$out" || fail "no cuLaunchKernel_ptsz call in the trace"
    FAKEGPU_TRACE=1 run_ok "cudart-check kernel" out cudart_bare kernel --path default --ns 1000000
    grep -qE '^fakegpu: cuLaunchKernel = 0$' <<<"$out" || fail "no cuLaunchKernel call in the trace"
}

# Two devices, two contexts: cudaDeviceSynchronize waits for the current device's work only.
test_synchronize_two_devices() {
    local out
    run_ok "cudart-check sync2" out cudart_bare sync2 --ns 400000000
    # busy(400 ms) on device 0, busy(100 ms) on device 1.
    assert_between "device 1's cudaDeviceSynchronize (ns)" "$(kv device1_sync_ns "$out")" 100000000 300000000
    assert_between "device 0's cudaDeviceSynchronize (ns)" "$(kv device0_sync_ns "$out")" 400000000 600000000
}

# A second context on the device (cuCtxCreate through cudaGetDriverEntryPointByVersion) runs
# busy(300 ms); with the primary context current, cuCtxSynchronize as CUDA 13 defines it
# (cuCtxSynchronize_v2(ctx)) of the second context waits for that kernel.
test_synchronize_another_context() {
    local out
    run_ok "cudart-check ctx-sync" out cudart_bare ctx-sync --ns 300000000
    assert_between "cuCtxSynchronize_v2 of the other context (ns)" "$(kv ctx_sync_ns "$out")" 250000000 500000000
}

# cudaDeviceSynchronize on a thread that has done nothing else with CUDA waits for the kernel
# another thread launched.
test_synchronize_from_another_thread() {
    local out
    run_ok "cudart-check sync-thread" out cudart_bare sync-thread --ns 300000000
    assert_between "cudaDeviceSynchronize on the other thread (ns)" "$(kv thread_sync_ns "$out")" 300000000 500000000
}

# cudaDeviceReset gives the device's memory back, and the runtime works again afterwards.
test_device_reset() {
    local out
    run_ok "cudart-check reset" out cudart_bare reset
    assert_eq "free memory after the reset" "$(kv free_after_reset "$out")" "$(kv free_before "$out")"
    assert_eq "free memory with 1 GiB allocated" "$(kv free_during "$out")" $(($(kv free_before "$out") - (1 << 30)))
}
