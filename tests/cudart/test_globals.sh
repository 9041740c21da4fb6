# shellcheck shell=bash
# A __device__ variable registered through the runtime (__cudaRegisterVar, as nvcc's host code
# does): the runtime finds it in the module it loads (cuLibraryGetGlobal / cuModuleGetGlobal,
# which the simulated driver answers from the cubin's symbol table), cudaMemcpyToSymbol and
# cudaMemcpyFromSymbol move its bytes, and its module is charged to the slice for the array.
# limits-check.c's `symbol` command; the slice is test_limits.sh's (1 GiB on GPU 1).

# globals_bare ARGS...: limits-check ARGS on the simulated GPU, no shim.
globals_bare() { PROG=$LIMITS cudart_bare "$@"; }

test_globals_registered_variable() {
    local out
    limits_build
    run_ok "symbol --register 64M" out globals_bare symbol --register 64M
    assert_eq "cudaGetSymbolSize" "$(kv size_error "$out")" cudaSuccess
    assert_eq "the registered array's size" "$(kv symbol_size "$out")" $((64 * MIB))
    assert_eq "cudaGetSymbolAddress" "$(kv address_error "$out")" cudaSuccess
    assert_eq "cudaMemcpyToSymbol, cudaMemcpyFromSymbol" "$(kv copy_error "$out")" cudaSuccess
    assert_eq "bytes read back" "$(kv round_trip "$out")" 1
}

test_globals_slice_registered_variable() {
    local out free=$((LIMITS_SLICE_BYTES - CUDART_CONTEXT_BYTES))
    limits_build
    limits_node
    run_ok "symbol --register 256M in the slice" out limits_in_slice symbol --register 256M
    assert_eq "the registered array's size" "$(kv symbol_size "$out")" $((256 * MIB))
    assert_eq "bytes read back" "$(kv round_trip "$out")" 1
    assert_eq "free memory with the module charged" "$(kv free "$out")" $((free - 256 * MIB - 64 * 1024))
}
