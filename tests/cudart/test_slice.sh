# shellcheck shell=bash
# NVIDIA's runtime in a slice, without containers: gpuslice-cdi writes the node's slices (40 GiB
# and 50 % of an 80 GiB GPU each) and the program runs with the shim preloaded and the slice's
# state mounted as the hook mounts it in a container (cudart_in_slice).

# cudaMemGetInfo and the device properties show the slice, not the GPU.
test_slice_memory_view() {
    local out
    cudart_node
    run_ok "meminfo in slice0" out cudart_in_slice slice0 meminfo
    assert_eq "cudaMemGetInfo total" "$(kv total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "cudaMemGetInfo free" "$(kv free "$out")" $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    run_ok "devices in slice0" out cudart_in_slice slice0 devices
    assert_eq "cudaDeviceProp.totalGlobalMem of device 0" "$(kv total0 "$out")" "$CUDART_SLICE_BYTES"
}

# Every allocation path stops at the slice's limit with cudaErrorMemoryAllocation (the GPU has
# twice as much), and everything comes back when freed.
test_slice_allocation_limits() {
    local out path allocated
    cudart_node
    for path in malloc managed pitch array3d async pool; do
        run_ok "fill --path $path in slice0" out cudart_in_slice slice0 fill --path "$path" --chunk 1G
        assert_eq "$path: the error past the limit" "$(kv stop_error "$out")" cudaErrorMemoryAllocation
        allocated=$(kv allocated "$out")
        # 1 GiB chunks up to 40 GiB, less the context's 256 MiB: 39 fit.
        assert_between "$path: bytes allocated" "$allocated" $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES - (1 << 30))) \
            $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES))
        assert_eq "$path: free memory after freeing it all" "$(kv free_after "$out")" "$(kv free_before "$out")"
    done
}

# Kernels through the shim: plain, per-thread default stream, graphs, captured graphs.
test_slice_kernels() {
    local out path check
    cudart_node
    for check in "${CHECK:?}" "${CHECK_PTDS:?}"; do
        for path in default graph capture; do
            PROG=$check run_ok "${check##*/} kernel --path $path in slice0" out cudart_in_slice slice0 kernel --path "$path" --ns 20000000
            # 20 ms of busy, paced to the slice's 50 %: at least 20 ms between the events.
            assert_between "device time between the events (ms)" "$(kv elapsed_ms "$out")" 20 200
        done
    done
}

# As test_synchronize_another_context, through the shim: cuCtxSynchronize_v2 of the second
# context must wait for its kernel, not return at once (the shim once handed out its
# cuCtxSynchronize, which takes no argument, for the driver's cuCtxSynchronize_v2).
test_slice_synchronize_another_context() {
    local out
    cudart_node
    run_ok "ctx-sync in slice0" out cudart_in_slice slice0 ctx-sync --ns 300000000
    assert_between "cuCtxSynchronize_v2 of the other context (ns)" "$(kv ctx_sync_ns "$out")" 250000000 800000000
}

# cudaDeviceReset in a slice: the memory it frees must come back to the slice, as it does on
# the device (test_device_reset).
test_slice_device_reset() {
    local out
    cudart_node
    run_ok "reset in slice0" out cudart_in_slice slice0 reset
    assert_eq "free memory after the reset" "$(kv free_after_reset "$out")" "$(kv free_before "$out")"
}

# A 50 % slice gets half the device timeline with busy kernels back to back (±5 points), where
# the bare GPU gives the same program nearly all of it.
test_slice_compute_share() {
    local out share
    cudart_node
    run_ok "work in slice0" out cudart_in_slice slice0 work --ns 1000000 --seconds 3 --sync-every 16
    share=$(kv share_pct "$out")
    assert_between "slice0's share of the GPU (%)" "$share" 45 55
    run_ok "work without the shim" out cudart_bare work --ns 1000000 --seconds 1 --sync-every 16
    assert_between "the bare GPU's share (%)" "$(kv share_pct "$out")" 80 100
}
