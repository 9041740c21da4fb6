# shellcheck shell=bash
# A mixed node, one GPU per mode, in one spec, through Docker on the simulated GPU: GPU 0 in
# mode none (device gpu0, the whole GPU), GPU 1 in mode shim (slice shim1, 20 GiB, held by the
# interception library), GPU 2 in MIG mode with one 1g.10gb MIG device (mig2-9, held by the
# simulated hardware), GPU 3 in mode mps (slice mps3, 20 GiB at 25 %, held by the MPS control
# daemon the node daemon supervises). `generate` runs once; each container sees what its mode
# gives it, and `list` and `status` show all four.
# Functions defined here are called indirectly (wait_for, defer):
# shellcheck disable=SC2317

MODES_MIG_UUID=MIG-6a3f1d2e-0209-4e2a-9c1b-000000000209

# modes_fakegpu_toml FILE: four simulated GPUs, minors 0-3; GPU 2 in MIG mode.
modes_fakegpu_toml() {
    local i
    {
        printf 'driver_version = "580.95.05"\ncuda_version = 13000\n'
        for i in 0 1 2 3; do
            printf '\n[[gpu]]\nuuid = "GPU-6a3f1d2e-000%d-4e2a-9c1b-00000000000%d"\n' "$i" "$i"
            printf 'name = "NVIDIA H100 80GB HBM3 (simulated)"\nmemory = "80GiB"\nsm_count = 132\n'
            printf 'minor = %d\npci_bus_id = "00000000:0%d:00.0"\n' "$i" $((i + 1))
            if ((i == 2)); then
                printf 'mig_mode = true\n\n[[gpu.mig]]\nuuid = "%s"\nprofile = "1g.10gb"\n' "$MODES_MIG_UUID"
                printf 'memory = "10GiB"\nsm_count = 16\ngpu_instance_id = 9\n'
            fi
        done
    } >"$1"
}

# modes_node: the mixed node, its spec installed for Docker, the node daemon started (stopped,
# and GPU 3's MPS daemon with it, when the test ends).
modes_node() {
    require_hook_flow
    require_docker
    require_file "$E2E_MPS_CONTROL" "make release (the simulated GPU's nvidia-cuda-mps-control)"
    command -v jq >/dev/null || skip "no jq (tests/e2e/install-deps.sh installs it)"
    local uvm caps="" used m
    mkdir -p "$T/cdi" "$T/state"
    defer remove_state_devices "$T/state"
    uvm=$(make_devroot "$T/devroot")
    mknod -m 666 "$T/devroot/dev/nvidia2" c 195 2
    mknod -m 666 "$T/devroot/dev/nvidia3" c 195 3
    used=$(awk '/^Character devices:/ {c=1; next} /^$/ {c=0} c {print $1}' /proc/devices)
    for m in $(seq 236 -1 200); do
        if [[ $m != "$uvm" ]] && ! grep -qx "$m" <<<"$used"; then caps=$m; break; fi
    done
    [[ -n $caps ]] || fail "no unused character major for nvidia-caps"
    # GPU minor 2's GPU instance 9 and its compute instance 0 (the driver's numbering:
    # 3 + 135·minor + 9·gi, its ci<c> one more + c).
    mkdir -p "$T/devroot/dev/nvidia-caps"
    for m in 354 355; do mknod -m 444 "$T/devroot/dev/nvidia-caps/nvidia-cap$m" c "$caps" "$m"; done
    modes_fakegpu_toml "$T/fakegpu.toml"
    make_driver_root "$T/driver" "$T/fakegpu.toml"
    mkdir -p "$T/driver/proc/driver/nvidia-caps"
    printf 'config 1\nmonitor 2\ngpu2/gi9/access 354\ngpu2/gi9/ci0/access 355\n' \
        >"$T/driver/proc/driver/nvidia-caps/mig-minors"
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH="$E2E_HOOK" SHIM_PATH="$E2E_SHIM" \
        DRIVER_ROOT="$T/driver" ANNOTATIONS=false
    cat >>"$T/gpuslice.toml" <<EOF

[[gpu]]
index = 0
mode = "none"

[[gpu]]
index = 1
mode = "shim"
slices = [{ name = "shim1", memory = "20GiB", cores = 100 }]

[[gpu]]
index = 2
mode = "mig"

[[gpu]]
index = 3
mode = "mps"
slices = [{ name = "mps3", memory = "20GiB", cores = 25 }]

[mps]
control = "$E2E_MPS_CONTROL"

[guard]
metrics = ""
EOF
    FAKEGPU_CONFIG=$T/fakegpu.toml "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "gpuslice-cdi generate failed"
    sed 's/^/spec: /' "$T/cdi/gpuslice.yaml"
    # shellcheck disable=SC2034 # read by docker_gpu (test_hook.sh)
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state" "$T/fakegpu.toml")
    install_docker_spec "$T/cdi/gpuslice.yaml"
    FAKEGPU_CONFIG=$T/fakegpu.toml FAKEGPU_STATE_DIR=$T/fakegpu-state "$E2E_GENERATOR" daemon \
        --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB" >/dev/null 2>"$T/daemon.log" 9>&- &
    MODES_NODE_PID=$!
    defer stop_modes_node
    wait_for 20 modes_mps_daemon_up || fail "the MPS daemon did not come up: $(cat "$T/daemon.log")"
}

stop_modes_node() {
    kill -TERM "$MODES_NODE_PID" 2>/dev/null && wait "$MODES_NODE_PID" 2>/dev/null
    ! kill -0 "$MODES_NODE_PID" 2>/dev/null || { e2e_log "the node daemon outlived SIGTERM"; kill -KILL "$MODES_NODE_PID"; }
    printf -- '--- the node daemon'"'"'s log\n' >&2
    cat "$T/daemon.log" >&2
}

modes_mps_daemon_up() { [[ $(slice_field mps3 mps_daemon.running) == true ]]; }

test_docker_mixed_node_one_gpu_per_mode() {
    modes_node
    local n image out
    for n in gpu0 shim1 mig2-9 mps3 all; do
        grep -qE "^ *(- )?name: $n\$" "$T/cdi/gpuslice.yaml" || fail "the spec has no device $n"
    done
    image=$(e2e_glibc_image)

    # GPU 0, mode none: the whole GPU, no interception library, no MPS.
    # shellcheck disable=SC2016 # expanded in the container
    out=$(docker_gpu --device gpuslice.dev/vgpu=gpu0 "$image" sh -c '
        cuda-probe meminfo
        echo "preload=$(cat /etc/ld.so.preload 2>/dev/null | head -n1)"
        echo "mps=${CUDA_MPS_PIPE_DIRECTORY-unset}"') || fail "docker run with gpu0 failed"
    printf '%s\n' "$out"
    assert_line_in "total=85899345920" "$out" "cuMemGetInfo on the whole GPU 0"
    assert_line_in "preload=" "$out" "no interception library in mode none"
    assert_line_in "mps=unset" "$out" "no MPS in mode none"
    docker_gpu --device gpuslice.dev/vgpu=gpu0 "$image" cuda-probe alloc --path alloc --size 60G ||
        fail "60 GiB on the whole GPU 0 failed"

    # GPU 1, mode shim: the slice's 20 GiB through the interception library (CUDA device 1:
    # the simulated driver shows every GPU to a container without CUDA_VISIBLE_DEVICES).
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=shim1 "$image" sh -c '
        cuda-probe --device 1 meminfo; echo "preload=$(head -n1 /etc/ld.so.preload)"') ||
        fail "docker run with shim1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=21474836480" "$out" "cuMemGetInfo on the shim slice"
    assert_line_in "preload=$HOOK_IMAGE_SHIM" "$out" "the shim slice's preload"
    out=$(docker_gpu --device gpuslice.dev/vgpu=shim1 "$image" cuda-probe --device 1 alloc --path alloc --size 21G) &&
        fail "21 GiB in a 20 GiB shim slice succeeded:"$'\n'"$out"
    assert_over_limit "$out"

    # GPU 2, mode mig: one device, the instance's memory, its capability nodes.
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=mig2-9 "$image" sh -c '
        cuda-probe info
        echo "visible=$CUDA_VISIBLE_DEVICES"
        echo "preload=$(cat /etc/ld.so.preload 2>/dev/null | head -n1)"
        echo "caps=$(ls /dev/nvidia-caps | tr "\n" " ")"') || fail "docker run with mig2-9 failed"
    printf '%s\n' "$out"
    assert_line_in "device_count=1" "$out" "CUDA on the MIG device"
    assert_line_in "total=10737418240" "$out" "cuMemGetInfo on the 1g.10gb"
    assert_line_in "sm_count=16" "$out" "the instance's SMs"
    assert_line_in "visible=$MODES_MIG_UUID" "$out" "CUDA_VISIBLE_DEVICES"
    assert_line_in "preload=" "$out" "no interception library on a MIG device"
    assert_line_in "caps=nvidia-cap354 nvidia-cap355 " "$out" "the instance's capability nodes"
    out=$(docker_gpu --device gpuslice.dev/vgpu=mig2-9 "$image" cuda-probe alloc --path alloc --size 11G) &&
        fail "11 GiB on a 10 GiB MIG device succeeded:"$'\n'"$out"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "past the MIG device"

    # GPU 3, mode mps: the MPS variables, the pipe directory, the pinned limit held.
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=mps3 "$image" sh -c '
        echo "env=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
        echo "preload=$(cat /etc/ld.so.preload 2>/dev/null | head -n1)"
        ls /tmp/nvidia-mps') || fail "docker run with mps3 failed"
    printf '%s\n' "$out"
    assert_line_in "env=25 0=20480M" "$out" "the MPS variables"
    assert_line_in "preload=" "$out" "no interception library in an mps slice"
    assert_line_in "control" "$out" "GPU 3's pipe directory"
    docker_gpu --device gpuslice.dev/vgpu=mps3 "$image" cuda-probe --device 3 alloc --path alloc --size 19G ||
        fail "19 GiB in a 20 GiB mps slice failed"
    out=$(docker_gpu --device gpuslice.dev/vgpu=mps3 "$image" cuda-probe --device 3 alloc --path alloc --size 21G) &&
        fail "21 GiB in a 20 GiB mps slice succeeded:"$'\n'"$out"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "past the pinned limit"

    # list and status show all four.
    out=$(FAKEGPU_CONFIG=$T/fakegpu.toml "$E2E_GENERATOR" list --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB") ||
        fail "gpuslice-cdi list failed"
    printf '%s\n' "$out"
    grep -qE '^gpu0 +0 .* none$' <<<"$out" || fail "list: no row for gpu0 in mode none"
    grep -qE '^shim1 +1 .* shim$' <<<"$out" || fail "list: no row for shim1 in mode shim"
    grep -qE '^mig2-9 +2 .* mig$' <<<"$out" || fail "list: no row for mig2-9 in mode mig"
    grep -qE '^mps3 +3 .* mps$' <<<"$out" || fail "list: no row for mps3 in mode mps"
    "$E2E_GENERATOR" status --state-dir "$T/state"
    for n in gpu0:none shim1:shim mig2-9:mig mps3:mps; do
        [[ $(slice_field "${n%%:*}" mode) == "${n#*:}" ]] || fail "status: ${n%%:*} is not in mode ${n#*:}"
        [[ $(slice_field "${n%%:*}" error) == null ]] || fail "status: ${n%%:*} has an error: $(slice_field "${n%%:*}" error)"
    done
    [[ $(slice_field mig2-9 mig.uuid) == "$MODES_MIG_UUID" ]] || fail "status: mig2-9's MIG UUID"
    [[ $(slice_field mps3 mps_daemon.running) == true ]] || fail "status: GPU 3's MPS daemon"
    [[ $(slice_field shim1 memory_limit_bytes) == 21474836480 ]] || fail "status: shim1's limit"
}
