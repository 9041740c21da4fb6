# shellcheck shell=bash
# Graph memory and stream-ordered frees through NVIDIA's runtime, in a slice (40 GiB of an
# 80 GiB GPU) and on the bare GPU: graphmem-check (built here against the runtime, beside
# cudart-check) takes memory through an alloc node, a captured cudaMallocAsync, and a pool
# whose free is followed by a synchronisation. Within the slice it works; past it (but within
# the GPU) the upload or launch that would map the memory is refused.

# graphmem_build: $PROG, graphmem-check built against $RT beside $CHECK (and its libcudart).
graphmem_build() {
    local root dir flags=() d
    root=$CUDART_CACHE/$RT
    dir=$(dirname "$CHECK")
    IFS=: read -ra d <<<"$(cudart_field "$RT" 3)"
    for i in "${d[@]}"; do flags+=(-I "$root/$i"); done
    PROG=$dir/graphmem-check
    if [[ ! -x $PROG ]]; then
        # '$ORIGIN' is for the loader, not the shell.
        # shellcheck disable=SC2016
        gcc -std=c11 -O2 -Wall -Wextra -Werror "${flags[@]}" "$CUDART_DIR/graphmem-check.c" \
            "$dir/$(basename "$(cudart_field "$RT" 2)")" -Xlinker -rpath -Xlinker '$ORIGIN' -o "$PROG" ||
            fail "building graphmem-check against $RT"
    fi
}

GRAPHMEM_FITS=$((CUDART_SLICE_BYTES * 3 / 4))
GRAPHMEM_OVER=$((CUDART_SLICE_BYTES * 3 / 2))

# An alloc node within the slice maps and unmaps as on the GPU; past it, upload and launch
# (and an instantiate that uploads) are refused, where the bare GPU takes it.
test_graphmem_alloc_node() {
    local out
    cudart_node
    graphmem_build
    run_ok "node within the slice" out cudart_in_slice slice0 node "$GRAPHMEM_FITS"
    for step in graph instantiate upload launch relaunch trim; do
        assert_eq "$step within the slice" "$(kv "$step" "$out")" cudaSuccess
    done
    assert_eq "graph memory reserved" "$(kv reserved "$out")" "$GRAPHMEM_FITS"
    assert_eq "free memory with the graph's memory mapped" "$(kv free_after_launch "$out")" \
        $(($(kv free_before "$out") - GRAPHMEM_FITS))
    assert_eq "graph memory reserved after the trim" "$(kv reserved_after_trim "$out")" 0
    assert_eq "free memory after the trim" "$(kv free_after_trim "$out")" "$(kv free_before "$out")"

    run_ok "node past the slice" out cudart_in_slice slice0 node "$GRAPHMEM_OVER"
    assert_eq "instantiate past the slice (no upload)" "$(kv instantiate "$out")" cudaSuccess
    assert_eq "upload past the slice" "$(kv upload "$out")" cudaErrorMemoryAllocation
    assert_eq "launch past the slice" "$(kv launch "$out")" cudaErrorMemoryAllocation
    assert_eq "graph memory reserved" "$(kv reserved "$out")" 0
    assert_eq "free memory after the refusals" "$(kv free_after_trim "$out")" "$(kv free_before "$out")"

    run_ok "node past the slice, instantiated with an upload" out cudart_in_slice slice0 node "$GRAPHMEM_OVER" params
    assert_eq "instantiate with upload past the slice" "$(kv instantiate "$out")" cudaErrorMemoryAllocation
    run_ok "node within the slice, instantiated with an upload" out cudart_in_slice slice0 node "$GRAPHMEM_FITS" params
    assert_eq "instantiate with upload within the slice" "$(kv instantiate "$out")" cudaSuccess
    assert_eq "free memory after the instantiate's upload" "$(kv free_after_instantiate "$out")" \
        $(($(kv free_before "$out") - GRAPHMEM_FITS))

    run_ok "node on the bare GPU" out cudart_bare node "$GRAPHMEM_OVER"
    assert_eq "launch on the bare GPU" "$(kv launch "$out")" cudaSuccess
    assert_eq "graph memory reserved on the bare GPU" "$(kv reserved "$out")" "$GRAPHMEM_OVER"
}

# A cudaMallocAsync captured from a stream is graph memory: charged when the graph runs.
test_graphmem_captured_malloc_async() {
    local out
    cudart_node
    graphmem_build
    run_ok "captured allocation within the slice" out cudart_in_slice slice0 capture "$GRAPHMEM_FITS"
    for step in capture_alloc capture_free graph instantiate launch relaunch; do
        assert_eq "$step within the slice" "$(kv "$step" "$out")" cudaSuccess
    done
    assert_eq "graph memory reserved" "$(kv reserved "$out")" "$GRAPHMEM_FITS"
    assert_eq "free memory with the graph's memory mapped" "$(kv free_after_launch "$out")" \
        $(($(kv free_before "$out") - GRAPHMEM_FITS))
    assert_eq "free memory after the trim" "$(kv free_after_trim "$out")" "$(kv free_before "$out")"

    run_ok "captured allocation past the slice" out cudart_in_slice slice0 capture "$GRAPHMEM_OVER"
    assert_eq "captured cudaMallocAsync" "$(kv capture_alloc "$out")" cudaSuccess
    assert_eq "launch past the slice" "$(kv launch "$out")" cudaErrorMemoryAllocation
    run_ok "captured allocation on the bare GPU" out cudart_bare capture "$GRAPHMEM_OVER"
    assert_eq "launch on the bare GPU" "$(kv launch "$out")" cudaSuccess
}

# cudaDeviceGraphMemTrim gives the graph's memory back: an allocation that did not fit beside
# it then does.
test_graphmem_trim_gives_back() {
    local out
    cudart_node
    graphmem_build
    run_ok "trim in slice0" out cudart_in_slice slice0 trim "$GRAPHMEM_FITS" $((CUDART_SLICE_BYTES / 2))
    assert_eq "the graph's launch" "$(kv launch "$out")" cudaSuccess
    assert_eq "cudaMalloc beside the graph's memory" "$(kv malloc_before_trim "$out")" cudaErrorMemoryAllocation
    assert_eq "cudaMalloc after the trim" "$(kv malloc_after_trim "$out")" cudaSuccess
}

# cudaFreeAsync + cudaStreamSynchronize (or cudaDeviceSynchronize: cuCtxSynchronize, or
# cuCtxSynchronize_v2 from CUDA 13): the pool trims to its release threshold (0) at the
# synchronisation and the slice gets the memory back then, so cudaMalloc of the freed size fits.
test_graphmem_free_async_then_sync() {
    local out
    cudart_node
    graphmem_build
    for run in cudart_bare "cudart_in_slice slice0"; do
        for sync in stream device; do
            # shellcheck disable=SC2086
            run_ok "freeasync, $sync sync ($run)" out $run freeasync "$GRAPHMEM_FITS" "$sync"
            assert_eq "cudaMallocAsync ($run)" "$(kv malloc_async "$out")" cudaSuccess
            assert_eq "free memory after the $sync synchronisation ($run)" "$(kv free_after_sync "$out")" \
                "$(kv free_before "$out")"
            assert_eq "cudaMalloc of the freed size, $sync sync ($run)" "$(kv malloc_after_sync "$out")" cudaSuccess
        done
    done
}

# cudaStreamBeginCaptureToGraph (CUDA 12.3) after a launch on the same stream, which opened a
# pacing window there: the capture closes it first, so that a launch on another stream during
# the capture (which ends open windows) adds none of the pacing's events to the graph. The
# captured kernel runs when the graph is launched, paced as any launch.
test_graphmem_capture_to_graph_paced() {
    local out
    cudart_node
    PROG=$CHECK run_ok "kernel --path tograph in slice0" out cudart_in_slice slice0 kernel --path tograph --ns 20000000
    assert_eq "nodes in the graph captured into" "$(kv captured_nodes "$out")" 1
    assert_between "device time between the events (ms)" "$(kv elapsed_ms "$out")" 20 200
    run_ok "kernel --path tograph on the bare GPU" out cudart_bare kernel --path tograph --ns 20000000
    assert_between "device time on the bare GPU (ms)" "$(kv elapsed_ms "$out")" 20 200
}
