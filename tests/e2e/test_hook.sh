# shellcheck shell=bash
# The whole flow through real engines: gpuslice-cdi writes a spec whose hooks are the static
# gpuslice-hook, the engine runs the hook, and a CUDA program in the container sees its slice.
# The GPU is the simulated one (libfakegpu.so, brought in by the hook from a simulated driver
# root, its state shared between containers through fakegpu_run_args). Two 80 GiB GPUs split
# in two: slice0 and slice1 on GPU 0, slice2 and slice3 on GPU 1, 40 GiB each.

HOOK_SLICE_BYTES=42949672960
HOOK_IMAGE_SHIM=/usr/lib/gpuslice/libgpuslice.so

require_hook_flow() {
    require_generator
    require_file "$E2E_HOOK" "make hook"
    require_file "$E2E_SHIM" "the interception library"
    require_probe_build
    command -v patchelf >/dev/null || skip "no patchelf (tests/e2e/install-deps.sh installs it)"
}

# hook_node [ANNOTATIONS]: the simulated node with gpuslice set up: device nodes, a driver
# root, the spec in $T/cdi/gpuslice.yaml (hooks: $E2E_HOOK), slice state in $T/state. Sets
# HOOK_FAKE_ARGS, the engine arguments that give containers the simulated GPU.
hook_node() {
    local annotations=${1:-true}
    mkdir -p "$T/cdi" "$T/state"
    # Deferred first, so it runs after every container the test starts is gone.
    defer remove_state_devices "$T/state"
    make_devroot "$T/devroot" >/dev/null
    make_driver_root "$T/driver"
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH="$E2E_HOOK" SHIM_PATH="$E2E_SHIM" \
        DRIVER_ROOT="$T/driver" ANNOTATIONS="$annotations"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "gpuslice-cdi generate failed"
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state")
}

# docker_gpu ARGS...: `docker run --rm --network none` with the simulated GPU and ARGS
# (devices, options, image, command). Prints the container's stdout; its stderr and Docker's
# go to the test log and to $T/docker-stderr. Retries while the daemon has not yet seen a
# new spec file. Returns docker's status.
docker_gpu() {
    local status deadline=$((SECONDS + 10))
    while :; do
        status=0
        e2e_docker run --rm --network none "${HOOK_FAKE_ARGS[@]}" "$@" 2>"$T/docker-stderr" || status=$?
        cat "$T/docker-stderr" >&2
        if ((status != 0)) && grep -q 'unresolvable CDI devices' "$T/docker-stderr" && ((SECONDS < deadline)); then
            sleep 0.2
            continue
        fi
        return "$status"
    done
}

# slice_field SLICE FIELD: a field of `gpuslice-cdi status --json` for SLICE (jq syntax after the dot).
slice_field() {
    "$E2E_GENERATOR" status --state-dir "$T/state" --json | jq -r --arg s "$1" ".[] | select(.slice == \$s) | .$2"
}

slice_used_at_least() { (($(slice_field "$1" memory_used_bytes) >= $2)); }
slice_idle() { [[ $(slice_field "$1" memory_used_bytes) == 0 && $(slice_field "$1" 'containers | length') == 0 ]]; }

# assert_over_limit OUTPUT: the probe's allocation was refused as out of memory.
assert_over_limit() {
    assert_line_in "error_name=CUDA_ERROR_OUT_OF_MEMORY" "$1" "an allocation past the slice's limit"
}

test_hook_is_static() {
    require_file "$E2E_HOOK" "make hook"
    local headers
    headers=$(readelf -lW "$E2E_HOOK") || fail "readelf -l $E2E_HOOK"
    ! grep -q 'INTERP' <<<"$headers" || fail "gpuslice-hook asks for a dynamic loader:"$'\n'"$headers"
    ! readelf -d "$E2E_HOOK" | grep -q NEEDED || fail "gpuslice-hook needs shared libraries: $(readelf -d "$E2E_HOOK" | grep NEEDED)"
}

test_docker_hook_slice_view() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out
    image=$(e2e_glibc_image)
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" sh -c '
        cuda-probe meminfo
        cuda-probe nvml-meminfo --index 0 | sed "s/^/nvml_/"
        cuda-probe-direct meminfo | sed "s/^/direct_/"
        nvidia-smi | sed "s/^/smi_/"
        echo "preload=$(head -n1 /etc/ld.so.preload)"
        echo "slices=$(ls /run/gpuslice/slices)"
        echo "libcuda=$(readlink /usr/lib/gpuslice/driver/libcuda.so.1)"') ||
        fail "docker run with slice1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo in the container"
    assert_line_in "nvml_total=$HOOK_SLICE_BYTES" "$out" "NVML in the container"
    assert_line_in "direct_total=$HOOK_SLICE_BYTES" "$out" "a program linked against libcuda.so.1"
    assert_line_in "smi_total=$HOOK_SLICE_BYTES" "$out" "nvidia-smi (simulated) in the container"
    assert_line_in "preload=$HOOK_IMAGE_SHIM" "$out" "/etc/ld.so.preload"
    assert_line_in "slices=slice1" "$out" "/run/gpuslice/slices"
    assert_line_in "libcuda=libcuda.so.$(fakegpu_driver_version)" "$out" "the driver library"

    # An image with neither ldconfig nor a loader cache finds the driver all the same.
    image=$(e2e_glibc_image --no-ldconfig)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" cuda-probe meminfo) ||
        fail "docker run of an image without ldconfig failed"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo in an image without ldconfig"
}

test_docker_hook_limit_shared_and_released() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out holder=gpuslice-e2e-holder-$$
    image=$(e2e_glibc_image)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 41G) &&
        fail "a 41 GiB allocation in a 40 GiB slice succeeded:"$'\n'"$out"
    printf '%s\n' "$out"
    assert_over_limit "$out"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 39G) ||
        fail "a 39 GiB allocation in a 40 GiB slice failed"

    # One container holds 30 GiB; another on the same slice gets only what is left.
    defer e2e_docker rm -f "$holder"
    e2e_docker run -d --name "$holder" --network none "${HOOK_FAKE_ARGS[@]}" --device gpuslice.dev/vgpu=slice0 \
        "$image" cuda-probe fill --path alloc --chunk 1G --max-chunks 30 --hold-forever >/dev/null ||
        fail "starting the holder container failed"
    wait_for 30 slice_used_at_least slice0 $((30 << 30)) ||
        fail "the holder never held 30 GiB: $("$E2E_GENERATOR" status --state-dir "$T/state")"
    "$E2E_GENERATOR" status --state-dir "$T/state"
    [[ $(slice_field slice0 'containers | length') == 1 ]] || fail "the holder is not recorded in the region"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 12G) &&
        fail "12 GiB more fit beside the holder's 30 GiB in a 40 GiB slice:"$'\n'"$out"
    assert_over_limit "$out"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" sh -c 'cuda-probe meminfo && cuda-probe alloc --path alloc --size 8G') ||
        fail "8 GiB beside the holder's 30 GiB failed"
    printf '%s\n' "$out"
    (($(find_value_in "$out" free) < (10 << 30))) || fail "the second container's free memory ignores the holder"
    # Another slice of the same GPU is not affected.
    docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" cuda-probe alloc --path alloc --size 39G >/dev/null ||
        fail "slice1 lost memory to slice0's holder"

    e2e_docker rm -f "$holder" >/dev/null
    wait_for 20 slice_idle slice0 ||
        fail "slice0 still holds memory or containers after they exited: $("$E2E_GENERATOR" status --state-dir "$T/state")"
}

# find_value_in TEXT KEY: the number after KEY= in TEXT.
find_value_in() { sed -n "s/^$2=\([0-9]*\)$/\1/p" <<<"$1" | head -n1; }

test_docker_hook_two_slices() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out
    image=$(e2e_glibc_image)
    # shellcheck disable=SC2016
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 --device gpuslice.dev/vgpu=slice2 "$image" sh -c '
        echo "slices=$(ls /run/gpuslice/slices | tr "\n" " ")"
        echo "preload_lines=$(grep -c gpuslice /etc/ld.so.preload)"
        cuda-probe --device 0 meminfo | sed "s/^/gpu0_/"
        cuda-probe --device 1 meminfo | sed "s/^/gpu1_/"
        cuda-probe --device 1 alloc --path alloc --size 41G | sed "s/^/gpu1_/"
        true') || fail "docker run with two slices failed"
    printf '%s\n' "$out"
    assert_line_in "slices=slice0 slice2 " "$out" "both slices mounted"
    assert_line_in "preload_lines=1" "$out" "one preload entry for two slices"
    assert_line_in "gpu0_total=$HOOK_SLICE_BYTES" "$out" "GPU 0 through slice0"
    assert_line_in "gpu1_total=$HOOK_SLICE_BYTES" "$out" "GPU 1 through slice2"
    assert_line_in "gpu1_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "slice2's limit on GPU 1"
}

test_docker_hook_read_only_and_hostile_variables() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out
    image=$(e2e_glibc_image)
    out=$(docker_gpu --read-only --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe meminfo) ||
        fail "docker run --read-only failed"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "a --read-only container"
    # Variables a container sets cannot raise its limit or drop the interception library.
    out=$(docker_gpu --read-only --device gpuslice.dev/vgpu=slice0 -e GPUSLICE_MEMORY_LIMIT=80GiB -e LD_PRELOAD= \
        -e GPUSLICE_STATE_DIR=/tmp -e GPUSLICE_SLICES=none "$image" \
        sh -c 'cuda-probe meminfo; cuda-probe alloc --path alloc --size 41G; true') || fail "docker run failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "the view with hostile variables"
    assert_over_limit "$out"
}

test_docker_hook_hostile_images() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local kind victim before after tag out status
    for kind in etc preload usr-lib-gpuslice run proc-root cache; do
        victim=$T/victim-$kind
        mkdir -p "$victim/sub"
        printf '/host/only.so\n' >"$victim/ld.so.preload"
        printf 'host cache\n' >"$victim/ld.so.cache"
        before=$(victim_snapshot "$victim")
        make_hostile_rootfs "$T/hostile-$kind" "$kind" "$victim"
        tag=gpuslice-e2e/hostile-$kind:$$
        docker_image_from_rootfs "$T/hostile-$kind" "$tag"
        defer e2e_docker rmi -f "$tag"
        status=0
        out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$tag" cuda-probe meminfo) || status=$?
        printf '%s: status %d\n%s\n' "$kind" "$status" "$out"
        after=$(victim_snapshot "$victim")
        [[ $after == "$before" ]] || fail "$kind: the host directory changed:"$'\n'"$(diff <(echo "$before") <(echo "$after"))"
        ! grep -qF "$victim" /proc/self/mountinfo || fail "$kind: something is mounted on the host directory"
        if [[ $kind == proc-root ]]; then
            # A magic link (the engine has mounted /proc by then): refused outright.
            ((status != 0)) || fail "$kind: a container whose /usr/lib/gpuslice is a magic link started"
            grep -q 'gpuslice-hook: slice0: .*ELOOP' "$T/docker-stderr" || fail "$kind: not refused by the hook"
        else
            # Every other link resolved inside the image: the container gets its slice.
            ((status == 0)) || fail "$kind: the container failed"
            assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "$kind: the slice"
        fi
    done
}

test_docker_hook_errors_reach_the_operator() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image uuid
    image=$(e2e_glibc_image)
    # After a reboot /run is empty until the gpuslice-generate service has run: the slice's
    # devices are missing, and the container does not start (the engine cannot give it the
    # region's device), with the state's path in the message. generate brings it back.
    remove_state_devices "$T/state"
    rm -rf "$T/state"
    docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe meminfo >/dev/null &&
        fail "a container started with its slice's state missing"
    grep -qF "$T/state/slices/slice0/region" "$T/docker-stderr" ||
        fail "Docker did not name the missing state: $(cat "$T/docker-stderr")"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "gpuslice-cdi generate failed"
    install_docker_spec "$T/cdi/gpuslice.yaml"
    docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe meminfo >/dev/null ||
        fail "the container failed after generate made the state again"
    [[ -f $T/state/slices/slice0/limits && -b $T/state/slices/slice0/region ]] || fail "the state was not made again"
    # The slice's GPU left the node: the container does not start, and Docker shows why.
    uuid=$(sed -n 's/^GPU UUID: \t //p' "$T"/driver/proc/driver/nvidia/gpus/0000:01:00.0/information)
    [[ -n $uuid ]] || fail "no UUID in the simulated driver's information file"
    rm -rf "$T/driver/proc/driver/nvidia/gpus/0000:01:00.0"
    docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" true && fail "a container started on a GPU that is gone"
    grep -qF "gpuslice-hook: slice0 refers to $uuid which is not present on this node" "$T/docker-stderr" ||
        fail "Docker did not show the hook's message: $(cat "$T/docker-stderr")"
    slice_idle slice0 || fail "the refused container was recorded or charged"
}

test_podman_hook() {
    require_hook_flow
    require_podman
    hook_node "$(podman_annotations)"
    make_glibc_rootfs "$T/rootfs"
    local out
    out=$(e2e_podman "$T/cdi" run --rm --network none "${E2E_ULIMITS[@]}" "${HOOK_FAKE_ARGS[@]}" \
        --device gpuslice.dev/vgpu=slice1 --rootfs "$T/rootfs" \
        sh -c 'cuda-probe meminfo; cuda-probe nvml-meminfo | sed "s/^/nvml_/"; cuda-probe alloc --path alloc --size 41G; true') ||
        fail "podman run with slice1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo under podman"
    assert_line_in "nvml_total=$HOOK_SLICE_BYTES" "$out" "NVML under podman"
    assert_over_limit "$out"
    wait_for 10 slice_idle slice1 || fail "slice1 not idle after podman's container exited"
}

# A runc bundle written by hand: the hooks name the slice and where its state is, nothing else.
test_runc_hook_bundle() {
    require_hook_flow
    require_root
    command -v runc >/dev/null || skip "runc not installed"
    command -v jq >/dev/null || skip "jq not installed"
    hook_node
    make_glibc_rootfs "$T/rootfs"
    local dir=$T/bundle out hook_args
    make_runc_bundle "$dir" "$T/rootfs" -- sh -c 'cuda-probe meminfo; cuda-probe alloc --path alloc --size 41G; true'
    hook_args=(--slice slice1 --state-dir="$T/state" --driver-root="$T/driver" --shim-path="$E2E_SHIM")
    runc_bundle_add_hook "$dir" createContainer "$E2E_HOOK" create-container "${hook_args[@]}"
    runc_bundle_add_hook "$dir" poststop "$E2E_HOOK" poststop "${hook_args[@]}"
    runc_bundle_add_device "$dir" /dev/nvidia0 c 195 0
    runc_bundle_add_state_devices "$dir" "$T/state" slice1 "$(sed -n 's/^uuid = "\(.*\)"/\1/p' "$E2E_FAKEGPU_TOML" | head -n1)"
    mkdir -p "$T/fakegpu-state"
    runc_bundle_add_bind "$dir" "$E2E_FAKEGPU_TOML" /fakegpu/config.toml ro
    runc_bundle_add_bind "$dir" "$T/fakegpu-state" /fakegpu/state
    runc_bundle_add_env "$dir" FAKEGPU_CONFIG=/fakegpu/config.toml
    runc_bundle_add_env "$dir" FAKEGPU_STATE_DIR=/fakegpu/state
    out=$(runc_run "$dir" "gpuslice-e2e-$$") || fail "runc run failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo under runc"
    assert_over_limit "$out"
    slice_idle slice1 || fail "slice1 not idle after runc's container was deleted"
}

# work_share OUTPUT: the share_pct the probe's `work` printed.
work_share() { sed -n 's/^share_pct=//p' <<<"$1" | head -n1; }

# assert_share WHAT GOT WANT: GOT within 5 points of WANT.
assert_share() {
    awk -v g="$2" -v w="$3" 'BEGIN { exit !(g != "" && g >= w - 5 && g <= w + 5) }' ||
        fail "$1: ${2:-no} % of the GPU, want $3 ± 5"
}

test_docker_hook_compute_shares() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out a work=(cuda-probe work --path kernel --kernel-ns 1000000 --seconds 3 --sync-every 16)
    image=$(e2e_glibc_image)
    # slice0 alone: its 50 % (split_count = 2), not the idle GPU's 100 %.
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" "${work[@]}") || fail "docker run of the kernel loop failed"
    printf '%s\n' "$out"
    assert_share "slice0 alone" "$(work_share "$out")" 50
    # slice0 and slice1 share GPU 0 from two containers: half each.
    docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" "${work[@]}" >"$T/a.out" &
    a=$!
    docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" "${work[@]}" >"$T/b.out" || fail "slice1's container failed"
    wait "$a" || fail "slice0's container failed"
    cat "$T/a.out" "$T/b.out"
    assert_share "slice0 next to slice1" "$(work_share "$(cat "$T/a.out")")" 50
    assert_share "slice1 next to slice0" "$(work_share "$(cat "$T/b.out")")" 50
}
