# shellcheck shell=bash
# PyTorch's CUDA graphs (torch.cuda.graph, torch-graph-check.py) on the simulated GPU, in a
# slice: a capture of a few kernels and a tensor allocation replays. With the caching
# allocator (cudaMalloc) the graph's private memory pool is allocated during the capture, in
# relaxed capture mode, and charged to the slice there and then: mem_get_info inside shows
# it; a capture whose tensor does not fit the 40 GiB slice fails with PyTorch's
# torch.OutOfMemoryError with the slice's numbers (the bare 80 GiB GPU takes it). With
# backend:cudaMallocAsync the capture's allocations are graph memory nodes, charged to the
# slice when the graph first replays; past the slice the replay fails (PyTorch raises
# AcceleratorError "out of memory", from cudaGraphLaunch's cudaErrorMemoryAllocation).

TORCH_GRAPH_CHECK=$CUDART_DIR/torch-graph-check.py

torch_graph_variants() { cudart_frameworks | grep '^torch$'; }

# The caching allocator: 30 GiB captured within the slice, 60 GiB past it.
test_torch_graph_slice() {
    local out fits=$((30 << 30)) over=$((60 << 30)) pool
    require_framework
    cudart_node
    run_ok "torch-graph-check within slice0" out cudart_in_slice slice0 "$TORCH_GRAPH_CHECK" "$fits"
    assert_eq "the allocator" "$(kv backend "$out")" native
    assert_eq "capture within the slice" "$(kv capture "$out")" ok
    assert_eq "replay within the slice" "$(kv replay "$out")" ok
    assert_eq "a result read back after the replays" "$(kv result_read "$out")" True
    # The private pool (what PyTorch reserved during the capture) is what the slice lost.
    pool=$(($(kv reserved_captured "$out") - $(kv reserved_before "$out")))
    ((pool >= fits)) || fail "the graph's pool: $pool bytes, less than the $fits captured"
    assert_eq "free memory in the slice after the capture" "$(kv free_captured "$out")" $(($(kv free_before "$out") - pool))
    assert_eq "free memory after the replays" "$(kv free_replayed "$out")" "$(kv free_captured "$out")"
    assert_eq "free memory after the graph is reset" "$(kv free_reset "$out")" "$(kv free_before "$out")"

    run_ok "torch-graph-check past slice0" out cudart_in_slice slice0 "$TORCH_GRAPH_CHECK" "$over"
    local want='^OutOfMemoryError: CUDA out of memory\. Tried to allocate 60\.00 GiB\. GPU 0 has a total capacity of 40\.00 GiB of which [0-9.]+ (MiB|GiB) is free\.'
    [[ $(kv capture "$out") =~ $want ]] || fail "the capture past the slice: $(kv capture "$out")"
    assert_eq "replay past the slice" "$(kv replay "$out")" none

    run_ok "torch-graph-check on the bare GPU" out cudart_bare "$TORCH_GRAPH_CHECK" "$over"
    assert_eq "capture on the bare GPU" "$(kv capture "$out")" ok
    assert_eq "replay on the bare GPU" "$(kv replay "$out")" ok
}

# backend:cudaMallocAsync: nothing charged by the capture, the graph's memory at its first
# replay (30 GiB and the temporaries' few MiB); 60 GiB refused at replay in the slice only.
test_torch_graph_malloc_async() {
    local out fits=$((30 << 30)) over=$((60 << 30)) taken
    require_framework
    cudart_node
    local -x PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync
    run_ok "torch-graph-check within slice0 (cudaMallocAsync)" out cudart_in_slice slice0 "$TORCH_GRAPH_CHECK" "$fits"
    assert_eq "the allocator" "$(kv backend "$out")" cudaMallocAsync
    assert_eq "capture within the slice" "$(kv capture "$out")" ok
    assert_eq "free memory in the slice after the capture" "$(kv free_captured "$out")" "$(kv free_before "$out")"
    assert_eq "replay within the slice" "$(kv replay "$out")" ok
    assert_eq "a result read back after the replays" "$(kv result_read "$out")" True
    taken=$(($(kv free_before "$out") - $(kv free_replayed "$out")))
    assert_between "bytes the replayed graph took from the slice" "$taken" "$fits" $((fits + (64 << 20)))

    run_ok "torch-graph-check past slice0 (cudaMallocAsync)" out cudart_in_slice slice0 "$TORCH_GRAPH_CHECK" "$over"
    assert_eq "capture past the slice" "$(kv capture "$out")" ok
    assert_eq "replay past the slice" "$(kv replay "$out")" "AcceleratorError: CUDA error: out of memory"
    assert_eq "free memory after the refused replay" "$(kv free_replayed "$out")" "$(kv free_before "$out")"

    run_ok "torch-graph-check on the bare GPU (cudaMallocAsync)" out cudart_bare "$TORCH_GRAPH_CHECK" "$over"
    assert_eq "replay on the bare GPU" "$(kv replay "$out")" ok
}
