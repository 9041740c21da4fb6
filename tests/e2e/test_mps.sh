# shellcheck shell=bash
# Mode mps through Docker on the simulated GPU: GPU 0 in mode mps (four slices of 20 GiB and
# 25 %), GPU 1 in mode shim. The node daemon (gpuslice-cdi daemon) runs the simulated GPU's
# stand-in nvidia-cuda-mps-control for GPU 0 with the slices' ceiling; containers on an mps slice
# reach it through the pipe directory the spec mounts, and the simulated driver holds them to
# the daemon's limits, lowered by their own variables but never raised.
# Functions defined here are called indirectly (wait_for, defer):
# shellcheck disable=SC2317

E2E_MPS_CONTROL=${E2E_MPS_CONTROL:-$REPO_ROOT/target/release/nvidia-cuda-mps-control}

# mps_node: the node, its spec installed for Docker, the node daemon started (stopped, and its
# MPS daemon with it, when the test ends).
mps_node() {
    require_hook_flow
    require_docker
    require_file "$E2E_MPS_CONTROL" "make release (the simulated GPU's nvidia-cuda-mps-control)"
    command -v jq >/dev/null || skip "no jq (tests/e2e/install-deps.sh installs it)"
    mkdir -p "$T/cdi" "$T/state"
    defer remove_state_devices "$T/state"
    make_devroot "$T/devroot" >/dev/null
    make_driver_root "$T/driver"
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH="$E2E_HOOK" SHIM_PATH="$E2E_SHIM" \
        DRIVER_ROOT="$T/driver" ANNOTATIONS=false
    printf '\n[[gpu]]\nindex = 0\nmode = "mps"\nsplit_count = 4\n\n[mps]\ncontrol = "%s"\n\n[guard]\nmetrics = ""\n' \
        "$E2E_MPS_CONTROL" >>"$T/gpuslice.toml"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "gpuslice-cdi generate failed"
    # shellcheck disable=SC2034 # read by docker_gpu (test_hook.sh)
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state")
    install_docker_spec "$T/cdi/gpuslice.yaml"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML FAKEGPU_STATE_DIR=$T/fakegpu-state "$E2E_GENERATOR" daemon \
        --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB" >/dev/null 2>"$T/daemon.log" 9>&- &
    MPS_NODE_PID=$!
    defer stop_mps_node
    wait_for 20 mps_daemon_up || fail "the MPS daemon did not come up: $(cat "$T/daemon.log")"
}

stop_mps_node() {
    kill -TERM "$MPS_NODE_PID" 2>/dev/null && wait "$MPS_NODE_PID" 2>/dev/null
    ! kill -0 "$MPS_NODE_PID" 2>/dev/null || { e2e_log "the node daemon outlived SIGTERM"; kill -KILL "$MPS_NODE_PID"; }
    printf -- '--- the node daemon'"'"'s log\n' >&2
    cat "$T/daemon.log" >&2
}

# mps_field FIELD: FIELD of slice0's MPS daemon in `gpuslice-cdi status --json`.
mps_field() {
    "$E2E_GENERATOR" status --state-dir "$T/state" --json | jq -r ".[] | select(.slice == \"slice0\") | .mps_daemon.$1"
}
mps_daemon_up() { [[ $(mps_field running) == true ]]; }

test_docker_mps_slice_memory_limit_held_against_its_own_env() {
    mps_node
    local image out
    image=$(e2e_glibc_image)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 19G) ||
        fail "19 GiB in a 20 GiB mps slice failed:"$'\n'"$out"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 21G) &&
        fail "21 GiB in a 20 GiB mps slice succeeded:"$'\n'"$out"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "past the slice's pinned memory limit"
    # What the container's environment says: the spec's values (CDI's edits replace a variable
    # of the same name that `docker run -e` set).
    # shellcheck disable=SC2016 # expanded in the container
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 "$image" \
        sh -c 'echo "env=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT $CUDA_MPS_PIPE_DIRECTORY"; ls /tmp/nvidia-mps') ||
        fail "docker run with slice0 failed"
    printf '%s\n' "$out"
    assert_line_in "env=25 0=20480M /tmp/nvidia-mps" "$out" "the MPS variables in the container"
    assert_line_in "control" "$out" "the GPU's pipe directory in the container"
    # Hostile: the container raises the limit with -e, and again inside its own process.
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 -e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G "$image" \
        cuda-probe alloc --path alloc --size 21G) && fail "-e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G raised the limit"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "with -e raising the limit"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" sh -c \
        'CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G exec cuda-probe alloc --path alloc --size 21G') &&
        fail "the process's own CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G raised the limit"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "with the process raising the limit"
    # Lowering is the container's right (in its processes' environment: `-e` loses to the spec's
    # value, as shown above).
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" sh -c \
        'CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1G exec cuda-probe alloc --path alloc --size 2G') &&
        fail "a process that lowered its limit to 1 GiB got 2 GiB"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "with the limit lowered"
    # The shim GPU next to it is unchanged: its 40 GiB slices.
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice4 "$image" cuda-probe alloc --path alloc --size 30G) ||
        fail "30 GiB in a 40 GiB shim slice on the other GPU failed:"$'\n'"$out"
}

# The compute share: 25 % of the SMs makes each kernel four times as long, so a process that
# keeps the GPU busy gets at most about a quarter of the wall time in kernels (the machine is
# loaded: only the bound that a process without MPS could not meet is checked).
test_docker_mps_slice_compute_share() {
    mps_node
    local image out share
    image=$(e2e_glibc_image)
    # One timing run at a time on this machine; the lock is this shell's (fd 8), not Docker's.
    exec 8>/tmp/gpuslice-timing.lock
    flock -w 600 8 || fail "the timing lock stayed held"
    for env in CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100; do
        out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 -e "$env" "$image" cuda-probe work --path kernel \
            --kernel-ns 2000000 --count 300 --sync-every 1000 8>&-) || fail "the kernel loop failed ($env):"$'\n'"$out"
        share=$(sed -n 's/^share_pct=//p' <<<"$out")
        e2e_log "$env: kernels took ${share} % of the wall time (25 % of the SMs: each kernel 4× as long)"
        awk -v s="$share" 'BEGIN { exit !(s > 0 && s <= 40) }' ||
            fail "$env: kernels took ${share} % of the wall time on a 25 % mps slice"
    done
}

test_docker_mps_daemon_restarted_and_quit() {
    mps_node
    local pid image out
    pid=$(mps_field pid)
    kill -KILL "$pid"
    wait_for 20 bash -c "[[ \$('$E2E_GENERATOR' status --state-dir '$T/state' --json | jq -r '.[] | select(.slice == \"slice0\") | .mps_daemon | \"\(.running) \(.restarts)\"') == 'true 1' ]]" ||
        fail "the killed MPS daemon was not started again: $("$E2E_GENERATOR" status --state-dir "$T/state")"
    image=$(e2e_glibc_image)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 21G) &&
        fail "21 GiB in a 20 GiB mps slice succeeded after the restart"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "the restarted daemon's limits"
    stop_mps_node
    grep -q 'Command quit' "$T/state/mps/"*/log/control.log || fail "the node daemon did not quit the MPS daemon"
    ! [[ -e $(echo "$T/state/mps/"*/pipe/control) ]] || fail "the MPS control socket outlived quit"
}
