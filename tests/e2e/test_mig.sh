# shellcheck shell=bash
# Mode "mig" through Docker on the simulated GPU: a mixed node where GPU 0 is in MIG mode with
# two MIG devices (a 3g.40gb, GPU instance 1, and a 1g.10gb, GPU instance 9) published as
# mig0-1 and mig0-9, and GPU 1 in mode shim split in two (slice0, slice1), all in one spec. A
# container on a MIG device sees one device with the instance's memory and SMs, gets its
# parent's node and its two capability nodes, no interception library, and cannot allocate
# past the instance (the simulated hardware refuses it); a container on GPU 1's slice is sliced
# as before. The hook is the real one (test_hook.sh's flow).

MIG_SMALL_UUID=MIG-6a3f1d2e-0009-4e2a-9c1b-000000000009
MIG_SMALL_BYTES=10737418240

# mig_fakegpu_toml FILE: the tests' two simulated GPUs, GPU 0 in MIG mode with two MIG devices.
mig_fakegpu_toml() {
    cat >"$1" <<EOF
driver_version = "580.95.05"
cuda_version = 13000

[[gpu]]
uuid = "GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000"
name = "NVIDIA H100 80GB HBM3 (simulated)"
memory = "80GiB"
sm_count = 132
minor = 0
pci_bus_id = "00000000:01:00.0"
mig_mode = true

[[gpu.mig]]
uuid = "MIG-6a3f1d2e-0001-4e2a-9c1b-000000000001"
profile = "3g.40gb"
memory = "40GiB"
sm_count = 60
gpu_instance_id = 1

[[gpu.mig]]
uuid = "$MIG_SMALL_UUID"
profile = "1g.10gb"
memory = "10GiB"
sm_count = 16
gpu_instance_id = 9

[[gpu]]
uuid = "GPU-6a3f1d2e-0001-4e2a-9c1b-000000000001"
name = "NVIDIA H100 80GB HBM3 (simulated)"
memory = "80GiB"
sm_count = 132
minor = 1
pci_bus_id = "00000000:02:00.0"
EOF
}

# write_mig_minors ROOT: ROOT/proc/driver/nvidia-caps/mig-minors as the driver writes it for two
# GPU minors (gpu<g>/gi<i>/access = 3 + 135g + 9i, its ci<c> one more + c).
write_mig_minors() {
    local dir=$1/proc/driver/nvidia-caps g i c base
    mkdir -p "$dir"
    {
        printf 'config 1\nmonitor 2\n'
        for g in 0 1; do
            for i in $(seq 0 14); do
                base=$((3 + 135 * g + 9 * i))
                printf 'gpu%d/gi%d/access %d\n' "$g" "$i" "$base"
                for c in $(seq 0 7); do printf 'gpu%d/gi%d/ci%d/access %d\n' "$g" "$i" "$c" $((base + 1 + c)); done
            done
        done
    } >"$dir/mig-minors"
}

# mig_node: the mixed node set up as hook_node does (test_hook.sh), with the MIG GPU's
# capability nodes under the dev root (their own character major) and the driver's mig-minors.
mig_node() {
    local uvm caps="" used m
    mkdir -p "$T/cdi" "$T/state"
    defer remove_state_devices "$T/state"
    uvm=$(make_devroot "$T/devroot")
    used=$(awk '/^Character devices:/ {c=1; next} /^$/ {c=0} c {print $1}' /proc/devices)
    for m in $(seq 236 -1 200); do
        if [[ $m != "$uvm" ]] && ! grep -qx "$m" <<<"$used"; then caps=$m; break; fi
    done
    [[ -n $caps ]] || fail "no unused character major for nvidia-caps"
    mkdir -p "$T/devroot/dev/nvidia-caps"
    # GPU instance 1 (12, 13) and 9 (84, 85) of GPU minor 0.
    local minor
    for minor in 12 13 84 85; do mknod -m 444 "$T/devroot/dev/nvidia-caps/nvidia-cap$minor" c "$caps" "$minor"; done
    mig_fakegpu_toml "$T/fakegpu.toml"
    make_driver_root "$T/driver" "$T/fakegpu.toml"
    write_mig_minors "$T/driver"
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH="$E2E_HOOK" SHIM_PATH="$E2E_SHIM" \
        DRIVER_ROOT="$T/driver" ANNOTATIONS=true
    printf '\n[[gpu]]\nindex = 0\nmode = "mig"\n' >>"$T/gpuslice.toml"
    FAKEGPU_CONFIG=$T/fakegpu.toml "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "gpuslice-cdi generate failed"
    # shellcheck disable=SC2034 # read by docker_gpu (test_hook.sh)
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state" "$T/fakegpu.toml")
}

test_mig_generate_refuses_a_gpu_with_mig_off() {
    require_generator
    make_devroot "$T/devroot" >/dev/null
    mkdir -p "$T/driver"
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH=/bin/true SHIM_PATH=/bin/true \
        DRIVER_ROOT="$T/driver" ANNOTATIONS=false
    printf '\n[[gpu]]\nindex = 0\nmode = "mig"\n' >>"$T/gpuslice.toml"
    local out
    out=$(FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" 2>&1) && fail "generate accepted mode mig on a GPU with MIG off:"$'\n'"$out"
    printf '%s\n' "$out"
    grep -q 'gpu\[0\].mode = "mig": GPU 0 .* has MIG mode off' <<<"$out" || fail "not the one clear line expected: $out"
    [[ ! -e $T/cdi/gpuslice.yaml ]] || fail "a spec was written anyway"
}

test_docker_mig_device_is_the_instance() {
    require_hook_flow
    require_docker
    mig_node
    sed 's/^/spec: /' "$T/cdi/gpuslice.yaml"
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local n image out
    for n in mig0-1 mig0-9 slice0 slice1 all; do
        grep -qE "^ *(- )?name: $n\$" "$T/cdi/gpuslice.yaml" || fail "the spec has no device $n"
    done

    image=$(e2e_glibc_image)
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=mig0-9 "$image" sh -c '
        cuda-probe info
        echo "visible=$CUDA_VISIBLE_DEVICES"
        echo "preload=$(cat /etc/ld.so.preload 2>/dev/null | head -n1)"
        echo "caps=$(ls /dev/nvidia-caps | tr "\n" " ")"
        echo "nvidia1=$(test -e /dev/nvidia1 && echo yes || echo no)"
        echo "nvidia0=$(test -c /dev/nvidia0 && echo yes || echo no)"
        echo "limits_mode=$(sed -n "s/^mode=//p" /run/gpuslice/slices/mig0-9/limits)"') ||
        fail "docker run with mig0-9 failed"
    printf '%s\n' "$out"
    assert_line_in "device_count=1" "$out" "CUDA on a MIG device"
    assert_line_in "total_mem=$MIG_SMALL_BYTES" "$out" "cuDeviceTotalMem on the 1g.10gb"
    assert_line_in "total=$MIG_SMALL_BYTES" "$out" "cuMemGetInfo on the 1g.10gb"
    assert_line_in "sm_count=16" "$out" "the instance's SMs"
    assert_line_in "name=NVIDIA H100 80GB HBM3 (simulated) MIG 1g.10gb" "$out" "the device's name"
    assert_line_in "visible=$MIG_SMALL_UUID" "$out" "CUDA_VISIBLE_DEVICES"
    assert_line_in "preload=" "$out" "no interception library on a MIG device"
    assert_line_in "caps=nvidia-cap84 nvidia-cap85 " "$out" "the GPU and compute instance capability nodes"
    assert_line_in "nvidia0=yes" "$out" "the parent GPU's node"
    assert_line_in "nvidia1=no" "$out" "the other GPU's node"
    assert_line_in "limits_mode=mig" "$out" "the limits file"

    # The hardware boundary: past the instance's memory fails, within it works.
    out=$(docker_gpu --device gpuslice.dev/vgpu=mig0-9 "$image" cuda-probe alloc --path alloc --size 11G) &&
        fail "an 11 GiB allocation on a 10 GiB MIG device succeeded:"$'\n'"$out"
    printf '%s\n' "$out"
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "an allocation past the MIG device"
    docker_gpu --device gpuslice.dev/vgpu=mig0-9 "$image" cuda-probe alloc --path alloc --size 9G ||
        fail "a 9 GiB allocation on a 10 GiB MIG device failed"
    out=$(docker_gpu --device gpuslice.dev/vgpu=mig0-1 "$image" cuda-probe info) || fail "docker run with mig0-1 failed"
    assert_line_in "total_mem=42949672960" "$out" "cuDeviceTotalMem on the 3g.40gb"
    assert_line_in "sm_count=60" "$out" "the 3g.40gb's SMs"

    # GPU 1's slices in the same spec are sliced by the interception library as before (the
    # simulated driver shows every GPU to a container without CUDA_VISIBLE_DEVICES: GPU 1 is
    # CUDA device 1, as in test_hook.sh).
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" sh -c '
        cuda-probe --device 1 meminfo; echo "preload=$(head -n1 /etc/ld.so.preload)"; echo "visible=${CUDA_VISIBLE_DEVICES-unset}"') ||
        fail "docker run with slice1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=42949672960" "$out" "a shim slice of GPU 1 on the mixed node"
    assert_line_in "preload=$HOOK_IMAGE_SHIM" "$out" "the shim slice's preload"
    assert_line_in "visible=unset" "$out" "no CUDA_VISIBLE_DEVICES on a shim slice"

    # status shows the instance; the hardware keeps its limit, so there is no region.
    "$E2E_GENERATOR" status --state-dir "$T/state"
    [[ $(slice_field mig0-9 mode) == mig ]] || fail "status: mig0-9 is not in mode mig"
    [[ $(slice_field mig0-9 mig.uuid) == "$MIG_SMALL_UUID" ]] || fail "status: mig0-9's MIG UUID"
    [[ $(slice_field mig0-9 mig.sm_count) == 16 ]] || fail "status: mig0-9's SMs"
    [[ $(slice_field mig0-9 memory_limit_bytes) == "$MIG_SMALL_BYTES" ]] || fail "status: mig0-9's memory"
    [[ $(slice_field mig0-9 error) == null ]] || fail "status: mig0-9 has an error: $(slice_field mig0-9 error)"
    [[ ! -e $T/state/slices/mig0-9/region ]] || fail "a MIG device got a region"
    out=$(FAKEGPU_CONFIG=$T/fakegpu.toml "$E2E_GENERATOR" list --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB") ||
        fail "gpuslice-cdi list failed"
    printf '%s\n' "$out"
    grep -qE '^mig0-9 +0 +GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000 +10\.00 +12 +- +- +mig$' <<<"$out" ||
        fail "list: no row for mig0-9"
}
