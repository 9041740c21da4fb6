# shellcheck shell=bash
# CuPy's graphs (cupy.cuda.Stream.begin_capture / end_capture) with its stream-ordered
# allocator: an array allocated during the capture is graph memory. In the 40 GiB slice, 30 GiB
# is charged when the graph is uploaded; 60 GiB is refused at upload and launch with
# cudaErrorMemoryAllocation (the bare GPU takes it).

GRAPHMEM_CUPY_CHECK=$CUDART_DIR/cupy-graph-check.py

graphmem_cupy_variants() { cudart_frameworks | grep '^cupy'; }

test_graphmem_cupy_graph() {
    local out fits=$((CUDART_SLICE_BYTES * 3 / 4)) over=$((CUDART_SLICE_BYTES * 3 / 2))
    require_framework
    cudart_node
    run_ok "cupy-graph-check within the slice" out cudart_in_slice slice0 "$GRAPHMEM_CUPY_CHECK" "$fits"
    assert_eq "upload within the slice" "$(kv upload "$out")" ok
    assert_eq "launch within the slice" "$(kv launch "$out")" ok
    assert_eq "free memory with the graph's memory mapped" "$(kv free_after "$out")" $(($(kv free_before "$out") - fits))
    run_ok "cupy-graph-check past the slice" out cudart_in_slice slice0 "$GRAPHMEM_CUPY_CHECK" "$over"
    assert_eq "upload past the slice" "$(kv upload "$out")" cudaErrorMemoryAllocation
    assert_eq "launch past the slice" "$(kv launch "$out")" cudaErrorMemoryAllocation
    assert_eq "free memory after the refusals" "$(kv free_after "$out")" "$(kv free_before "$out")"
    run_ok "cupy-graph-check on the bare GPU" out cudart_bare "$GRAPHMEM_CUPY_CHECK" "$over"
    assert_eq "launch on the bare GPU" "$(kv launch "$out")" ok
}
