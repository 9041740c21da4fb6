# shellcheck shell=bash
# PyTorch (the CUDA build from PyPI, frameworks.txt: torch 2.15.0 with NVIDIA's CUDA 13.2
# runtime and libraries) on the simulated GPU, alone and in a slice through the shim: the
# device, memory info, kernels, tensors up to the slice's limit and torch.OutOfMemoryError past
# it, with each allocator PyTorch has (the caching allocator on cudaMalloc,
# expandable_segments on cuMemCreate/cuMemMap, backend:cudaMallocAsync), and
# torch.cuda.list_gpu_processes(). Kernels take modelled time and compute nothing.

TORCH_CHECK=$CUDART_DIR/torch-check.py

torch_variants() { cudart_frameworks | grep '^torch$'; }

test_torch_device() {
    local out
    require_framework
    run_ok "torch-check info" out cudart_bare "$TORCH_CHECK" info
    assert_eq "torch.cuda.is_available()" "$(kv available "$out")" True
    assert_eq "torch.cuda.device_count()" "$(kv count "$out")" 2
    assert_eq "torch.version.cuda" "$(kv cuda "$out")" 13.2
    assert_eq "mem_get_info total" "$(kv total "$out")" "$CUDART_GPU_BYTES"
    assert_eq "mem_get_info free" "$(kv free "$out")" $((CUDART_GPU_BYTES - CUDART_CONTEXT_BYTES))
    run_ok "torch-check kernel" out cudart_bare "$TORCH_CHECK" kernel
    assert_eq "a result read back after the kernels" "$(kv result_read "$out")" True
}

# torch_fill_in_slice CONF: tensors of 1 GiB in slice0 with PYTORCH_CUDA_ALLOC_CONF=CONF until
# torch.OutOfMemoryError; leaves the output in TORCH_OUT (not a command substitution, so that
# its output and failures reach the test's log).
torch_fill_in_slice() {
    PYTORCH_CUDA_ALLOC_CONF=$1 run_ok "torch-check fill in slice0 (PYTORCH_CUDA_ALLOC_CONF=$1)" TORCH_OUT \
        cudart_in_slice slice0 "$TORCH_CHECK" fill
    # 1 GiB tensors in 40 GiB less the context's 256 MiB: 38 or 39 fit, depending on what the
    # allocator keeps beside them.
    assert_between "1 GiB tensors that fit" "$(kv tensors "$TORCH_OUT")" 38 39
    assert_eq "everything given back" "$(kv given_back "$TORCH_OUT")" True
}

# assert_slice_oom ERROR: the caching allocator's torch.OutOfMemoryError, with the slice's
# numbers: a 40 GiB GPU with less than the 1 GiB asked for free, this process holding 39 GiB
# and its context (from NVML's process list, which c10::cuda::DriverAPI reads), 39 GiB
# allocated.
assert_slice_oom() {
    local want='^OutOfMemoryError: CUDA out of memory\. Tried to allocate 1024\.00 MiB\. GPU 0 has a total capacity of 40\.00 GiB of which [0-9.]+ MiB is free\. Including non-PyTorch memory, this process has 39\.25 GiB memory in use\. Of the allocated memory 39\.00 GiB is allocated by PyTorch'
    [[ $1 =~ $want ]] || fail "the error past the limit: $1"
}

test_torch_slice() {
    local out
    require_framework
    cudart_node
    run_ok "torch-check info in slice0" out cudart_in_slice slice0 "$TORCH_CHECK" info
    assert_eq "torch.cuda.is_available()" "$(kv available "$out")" True
    assert_eq "mem_get_info total" "$(kv total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "mem_get_info free" "$(kv free "$out")" $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    run_ok "torch-check kernel in slice0" out cudart_in_slice slice0 "$TORCH_CHECK" kernel
    assert_eq "a result read back after the kernels" "$(kv result_read "$out")" True
}

# The caching allocator (cudaMalloc): its out-of-memory error gives the slice's numbers.
test_torch_slice_limit() {
    local out
    require_framework
    cudart_node
    torch_fill_in_slice ""
    assert_slice_oom "$(kv error "$TORCH_OUT")"
}

# expandable_segments:True maps cuMemCreate allocations into reserved address space (VMM).
test_torch_expandable_segments() {
    local out
    require_framework
    cudart_node
    torch_fill_in_slice expandable_segments:True
    assert_slice_oom "$(kv error "$TORCH_OUT")"
}

# backend:cudaMallocAsync: stream-ordered allocations from the device's pool.
test_torch_malloc_async() {
    local out
    require_framework
    cudart_node
    PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync run_ok "torch-check info in slice0 (cudaMallocAsync)" out \
        cudart_in_slice slice0 "$TORCH_CHECK" info
    assert_eq "the allocator" "$(kv backend "$out")" cudaMallocAsync
    torch_fill_in_slice backend:cudaMallocAsync
    [[ $(kv error "$TORCH_OUT") == "OutOfMemoryError: Allocation on device 0 would exceed allowed memory."* ]] ||
        fail "the error past the limit: $(kv error "$TORCH_OUT")"
}

# torch.cuda.list_gpu_processes(): NVML's process list, through nvidia-ml-py.
test_torch_processes() {
    local out
    require_framework
    cudart_node
    run_ok "torch-check processes in slice0" out cudart_in_slice slice0 "$TORCH_CHECK" processes
    grep -q '^GPU:0$' <<<"$out" || fail "no GPU:0 line: $out"
    grep -qE '^process +[0-9]+ uses +[0-9.]+ MB GPU memory$' <<<"$out" || fail "no process of this slice listed: $out"
}
