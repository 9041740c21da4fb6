# shellcheck shell=bash
# NVIDIA's runtime as an MPS client (mode mps, docs/mps.md): cudart-check, linked against the
# real libcudart, on the simulated driver with the simulated GPU's stand-in
# nvidia-cuda-mps-control behind CUDA_MPS_PIPE_DIRECTORY (2 GiB pinned, 25 % of the SMs, as
# gpuslice-cdi daemon sets a GPU's ceiling). The runtime cannot tell it from the real driver:
# allocations stop at the daemon's limit with cudaErrorMemoryAllocation, a kernel takes four
# times its device time, and the process's own variables do not raise either.
# Functions defined here are called indirectly (run_ok, defer):
# shellcheck disable=SC2317

CUDART_MPS_CONTROL=${E2E_MPS_CONTROL:-$REPO_ROOT/target/release/nvidia-cuda-mps-control}

mps_control() { printf '%s\n' "$*" | CUDA_MPS_PIPE_DIRECTORY=$T/mps/pipe "$CUDART_MPS_CONTROL"; }

# mps_start: the stand-in daemon (-d), with its limits set; `quit` when the test ends.
mps_start() {
    require_file "$CUDART_MPS_CONTROL" "make release (the simulated GPU's nvidia-cuda-mps-control)"
    mkdir -p "$T/mps/pipe" "$T/mps/log"
    CUDA_MPS_PIPE_DIRECTORY=$T/mps/pipe CUDA_MPS_LOG_DIRECTORY=$T/mps/log "$CUDART_MPS_CONTROL" -d 9>&- ||
        fail "starting the MPS control daemon failed"
    defer mps_control quit
    mps_control set_default_device_pinned_mem_limit 0 2G >/dev/null || fail "setting the pinned memory limit failed"
    mps_control set_default_active_thread_percentage 25 >/dev/null || fail "setting the thread percentage failed"
}

mps_client() { CUDA_MPS_PIPE_DIRECTORY=$T/mps/pipe cudart_bare "$@"; }
mps_client_raising() {
    CUDA_MPS_PIPE_DIRECTORY=$T/mps/pipe CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=64G CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 \
        cudart_bare "$@"
}

test_mps_client_limits() {
    local out client
    mps_start
    for client in mps_client mps_client_raising; do
        run_ok "$client: cudart-check fill" out "$client" fill --path malloc --chunk 256M
        assert_eq "$client: the allocation that failed" "$(kv stop_error "$out")" cudaErrorMemoryAllocation
        assert_between "$client: bytes allocated" "$(kv allocated "$out")" $((1 << 30)) $((2 << 30))
        run_ok "$client: cudart-check kernel" out "$client" kernel --path default --ns 100000000
        assert_kernel_ms "$out" 400
    done
    # Without the daemon's socket there is no MPS: the whole GPU, a kernel its own length.
    mps_control quit >/dev/null
    wait_for 5 bash -c "[[ ! -e '$T/mps/pipe/control' ]]" || fail "the daemon did not quit"
    run_ok "cudart-check kernel without MPS" out mps_client kernel --path default --ns 100000000
    assert_kernel_ms "$out" 100
}
