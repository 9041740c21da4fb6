# shellcheck shell=bash
# CuPy (cupy-cuda12x and cupy-cuda13x, frameworks.txt) on the simulated GPU, alone and in a
# slice through the shim: memory info, arrays through CuPy's memory pool, the pool giving
# memory back, and CuPy's OutOfMemoryError past the slice's limit. Arrays come from
# cupy.empty: any kernel would need NVRTC, which the simulator does not run.

CUPY_CHECK=$CUDART_DIR/cupy-check.py

cupy_variants() { cudart_frameworks | grep '^cupy-'; }

# assert_pool_round_trip OUTPUT: a 1 GiB array took 1 GiB through the pool, kept by the pool
# after the array went, given back by free_all_blocks.
assert_pool_round_trip() {
    assert_eq "the array's bytes" "$(kv array_bytes "$1")" $((1 << 30))
    assert_eq "the pool's bytes in use" "$(kv pool_used "$1")" $((1 << 30))
    assert_eq "bytes taken from the device" "$(kv taken "$1")" $((1 << 30))
    assert_eq "the pool's bytes in use once the array is gone" "$(kv pool_used_after_del "$1")" 0
    assert_eq "bytes the pool keeps" "$(kv kept_by_pool "$1")" $((1 << 30))
    assert_eq "the pool after free_all_blocks" "$(kv pool_total_after_free "$1")" 0
    assert_eq "everything given back" "$(kv given_back "$1")" True
}

test_cupy_memory() {
    local out
    require_framework
    run_ok "cupy-check meminfo" out cudart_bare "$CUPY_CHECK" meminfo
    assert_eq "cupy.cuda.runtime.getDeviceCount" "$(kv count "$out")" 2
    assert_eq "memGetInfo total" "$(kv total "$out")" "$CUDART_GPU_BYTES"
    assert_eq "memGetInfo free" "$(kv free "$out")" $((CUDART_GPU_BYTES - CUDART_CONTEXT_BYTES))
    run_ok "cupy-check pool" out cudart_bare "$CUPY_CHECK" pool
    assert_pool_round_trip "$out"
}

test_cupy_slice() {
    local out
    require_framework
    cudart_node
    run_ok "cupy-check meminfo in slice0" out cudart_in_slice slice0 "$CUPY_CHECK" meminfo
    assert_eq "memGetInfo total" "$(kv total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "memGetInfo free" "$(kv free "$out")" $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    run_ok "cupy-check pool in slice0" out cudart_in_slice slice0 "$CUPY_CHECK" pool
    assert_pool_round_trip "$out"
    run_ok "cupy-check fill in slice0" out cudart_in_slice slice0 "$CUPY_CHECK" fill
    # 1 GiB arrays in 40 GiB less the context's 256 MiB: 39 fit.
    assert_eq "1 GiB arrays that fit" "$(kv arrays "$out")" 39
    [[ $(kv error "$out") == "OutOfMemoryError: Out of memory allocating 1,073,741,824 bytes"* ]] ||
        fail "the error past the limit: $(kv error "$out")"
    assert_eq "everything given back" "$(kv given_back "$out")" True
}

# The same in a container: Docker with `--device gpuslice.dev/vgpu=slice0` (the end-to-end
# tier's node, spec and hook), an image with Python and this CuPy (cudart_python_image).
test_cupy_docker() {
    local image out run
    require_framework
    docker_slice_setup
    image=$(cudart_python_image)
    run=(docker_gpu --device gpuslice.dev/vgpu=slice0 -e LD_LIBRARY_PATH=/opt/cudart-lib "$image" "/opt/$RT/bin/python" /opt/check/cupy-check.py)
    out=$("${run[@]}" meminfo) || fail "cupy-check meminfo in the container failed"
    printf '%s\n' "$out"
    assert_eq "memGetInfo total in the container" "$(kv total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "memGetInfo free in the container" "$(kv free "$out")" $((CUDART_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    out=$("${run[@]}" fill) || fail "cupy-check fill in the container failed"
    printf '%s\n' "$out"
    assert_eq "1 GiB arrays that fit" "$(kv arrays "$out")" 39
    [[ $(kv error "$out") == "OutOfMemoryError: Out of memory allocating 1,073,741,824 bytes"* ]] ||
        fail "the error past the limit: $(kv error "$out")"
    assert_eq "everything given back" "$(kv given_back "$out")" True
}
