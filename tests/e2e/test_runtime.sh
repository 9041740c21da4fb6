# shellcheck shell=bash
# gpuslice-runtime, the OCI runtime for engines without CDI, through real Docker: no CDI device
# is asked for; the container asks for its slice with GPUSLICE_SLICES or the annotation
# gpuslice.dev/slices, and gpuslice-runtime applies the slice's CDI edits to the bundle before
# runc runs (the hook then does what it does on the CDI path). The node is test_hook.sh's.
#
# Docker knows the runtime as "gpuslice" (install-deps.sh registers $E2E_RUNTIME_WRAPPER in
# daemon.json); each test points the wrapper at this build and its own config, and back at
# plain runc when it ends.

require_runtime_flow() {
    require_hook_flow
    require_file "$E2E_RUNTIME" "gpuslice-runtime"
}

require_docker_runtime() {
    require_docker
    e2e_docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"gpuslice"' ||
        skip "docker has no runtime \"gpuslice\" (run tests/e2e/install-deps.sh, which registers $E2E_RUNTIME_WRAPPER)"
}

# point_runtime_wrapper CONFIG: the wrapper runs this build of gpuslice-runtime with CONFIG,
# until the test ends.
point_runtime_wrapper() {
    local config=$1
    mkdir -p "$(dirname "$E2E_RUNTIME_WRAPPER")"
    printf '#!/bin/sh\nexec %q --gpuslice-config=%q "$@"\n' "$E2E_RUNTIME" "$config" >"$E2E_RUNTIME_WRAPPER.tmp"
    chmod 755 "$E2E_RUNTIME_WRAPPER.tmp"
    mv "$E2E_RUNTIME_WRAPPER.tmp" "$E2E_RUNTIME_WRAPPER"
    defer reset_runtime_wrapper
}

reset_runtime_wrapper() {
    printf '#!/bin/sh\nexec runc "$@"\n' >"$E2E_RUNTIME_WRAPPER.tmp"
    chmod 755 "$E2E_RUNTIME_WRAPPER.tmp"
    mv "$E2E_RUNTIME_WRAPPER.tmp" "$E2E_RUNTIME_WRAPPER"
}

# runtime_node: hook_node, and Docker's runtime "gpuslice" reading its config. The spec stays
# out of Docker's CDI directories: nothing here goes through CDI.
runtime_node() {
    hook_node
    point_runtime_wrapper "$T/gpuslice.toml"
}

test_docker_runtime_slice_view_and_limits() {
    require_runtime_flow
    require_docker_runtime
    runtime_node
    local image out holder=gpuslice-e2e-rt-holder-$$
    image=$(e2e_glibc_image)
    # shellcheck disable=SC2016
    out=$(docker_gpu --runtime gpuslice -e GPUSLICE_SLICES=slice1 "$image" sh -c '
        cuda-probe meminfo
        cuda-probe nvml-meminfo --index 0 | sed "s/^/nvml_/"
        nvidia-smi | sed "s/^/smi_/"
        cuda-probe alloc --path alloc --size 41G | sed "s/^/big_/"
        echo "slice=$GPUSLICE_SLICE"
        echo "nodes=$(ls /dev | grep "^nvidia[0-9]" | tr "\n" " ")"
        echo "slices=$(ls /run/gpuslice/slices)"
        echo "preload=$(head -n1 /etc/ld.so.preload)"
        true') || fail "docker run --runtime gpuslice -e GPUSLICE_SLICES=slice1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo through gpuslice-runtime"
    assert_line_in "nvml_total=$HOOK_SLICE_BYTES" "$out" "NVML through gpuslice-runtime"
    assert_line_in "smi_total=$HOOK_SLICE_BYTES" "$out" "nvidia-smi through gpuslice-runtime"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB in a 40 GiB slice"
    assert_line_in "slice=slice1" "$out" "GPUSLICE_SLICE"
    assert_line_in "nodes=nvidia0 " "$out" "slice1's GPU node and no other"
    assert_line_in "slices=slice1" "$out" "/run/gpuslice/slices"
    assert_line_in "preload=$HOOK_IMAGE_SHIM" "$out" "/etc/ld.so.preload"

    # Docker's --annotation reaches the runtime too: slice2 is on the second GPU (CUDA device 1:
    # the simulated driver lists every GPU, whatever nodes the container has).
    # shellcheck disable=SC2016
    out=$(docker_gpu --runtime gpuslice --annotation gpuslice.dev/slices=slice2 "$image" sh -c '
        cuda-probe --device 1 meminfo; echo "slice=$GPUSLICE_SLICE"; echo "nodes=$(ls /dev | grep "^nvidia[0-9]" | tr "\n" " ")"') ||
        fail "docker run --runtime gpuslice --annotation gpuslice.dev/slices=slice2 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "the annotation's slice"
    assert_line_in "slice=slice2" "$out" "GPUSLICE_SLICE from the annotation"
    assert_line_in "nodes=nvidia1 " "$out" "slice2's GPU node"

    # The slice is the same slice as through CDI: a holder started through the runtime is
    # seen by the CDI path's accounting, and the other way round.
    install_docker_spec "$T/cdi/gpuslice.yaml"
    defer e2e_docker rm -f "$holder"
    e2e_docker run -d --name "$holder" --network none "${HOOK_FAKE_ARGS[@]}" --runtime gpuslice \
        -e GPUSLICE_SLICES=slice0 "$image" cuda-probe fill --path alloc --chunk 1G --max-chunks 30 --hold-forever >/dev/null ||
        fail "starting the holder through gpuslice-runtime failed"
    wait_for 30 slice_used_at_least slice0 $((30 << 30)) ||
        fail "the holder never held 30 GiB: $("$E2E_GENERATOR" status --state-dir "$T/state")"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" cuda-probe alloc --path alloc --size 12G) &&
        fail "12 GiB more fit through CDI beside the runtime holder's 30 GiB:"$'\n'"$out"
    assert_over_limit "$out"
    e2e_docker rm -f "$holder" >/dev/null
    wait_for 20 slice_idle slice0 ||
        fail "slice0 not idle after the runtime's container exited: $("$E2E_GENERATOR" status --state-dir "$T/state")"
}

# docker_runtime_refused WANT ARGS...: `docker run --runtime gpuslice ARGS` fails, and Docker
# shows gpuslice-runtime's line containing WANT.
docker_runtime_refused() {
    local want=$1 image
    shift
    image=$(e2e_glibc_image)
    docker_gpu --runtime gpuslice "$@" "$image" true && fail "a container asking with $* started"
    grep -qF -- "$want" "$T/docker-stderr" || fail "Docker did not show '$want' for $*: $(cat "$T/docker-stderr")"
}

test_docker_runtime_refusals() {
    require_runtime_flow
    require_docker_runtime
    runtime_node
    local image out
    image=$(e2e_glibc_image)
    # A container that asks for nothing runs as under runc, without a GPU.
    # shellcheck disable=SC2016
    out=$(docker_gpu --runtime gpuslice "$image" sh -c 'ls /dev; echo "slice=${GPUSLICE_SLICE:-none}"') ||
        fail "a container without a slice failed under gpuslice-runtime"
    assert_line_in "slice=none" "$out" "no slice asked, none given"
    ! grep -q '^nvidia' <<<"$out" || fail "a container without a slice got GPU nodes: $out"

    docker_runtime_refused "gpuslice-runtime: unknown slice slice9 (asked for in GPUSLICE_SLICES); this node has slice0, slice1, slice2, slice3, all" \
        -e GPUSLICE_SLICES=slice9
    docker_runtime_refused 'gpuslice-runtime: GPUSLICE_SLICES="slice0,,slice1": an empty name in the list' \
        -e GPUSLICE_SLICES=slice0,,slice1
    docker_runtime_refused 'is a device of kind other.dev/gpu, not of this node' \
        --annotation gpuslice.dev/slices=other.dev/gpu=slice0
    docker_runtime_refused 'gpuslice-runtime: annotation gpuslice.dev/slices asks for slice1 but GPUSLICE_SLICES asks for slice0; ask in one place' \
        -e GPUSLICE_SLICES=slice0 --annotation gpuslice.dev/slices=slice1
    # The slice's GPU is no longer in the node (or the spec came from another node).
    local uuid
    uuid=$(sed -n 's/^GPU UUID: \t //p' "$T"/driver/proc/driver/nvidia/gpus/0000:01:00.0/information)
    rm -rf "$T/driver/proc/driver/nvidia/gpus/0000:01:00.0"
    docker_runtime_refused "gpuslice-runtime: slice0 refers to $uuid which is not present on this node" \
        -e GPUSLICE_SLICES=slice0
    slice_idle slice0 || fail "a refused container was recorded or charged"
}

test_docker_runtime_hostile_images() {
    require_runtime_flow
    require_docker_runtime
    runtime_node
    hostile_images_on_slice0 --runtime gpuslice -e GPUSLICE_SLICES=slice0
}

# podman without CDI (3.x): the OCI hooks directory. The shipped hook file
# (packaging/hooks.d/gpuslice.json: a precreate hook matching the annotation
# gpuslice.dev/slices) with this build's gpuslice-runtime and the test's config, in a hooks
# directory given with --hooks-dir; no CDI device is asked for.
test_podman_hooks_dir_annotation() {
    require_runtime_flow
    require_podman
    hook_node false
    make_glibc_rootfs "$T/rootfs"
    mkdir -p "$T/hooks.d" "$T/no-cdi"
    jq --arg path "$E2E_RUNTIME" --arg config "--gpuslice-config=$T/gpuslice.toml" \
        '.hook.path = $path | .hook.args += [$config]' "$REPO_ROOT/packaging/hooks.d/gpuslice.json" >"$T/hooks.d/gpuslice.json"
    # --rootfs is a flag: the rootfs is the first argument after the options.
    local out podman_run=(run --rm --network none "${E2E_ULIMITS[@]}" "${HOOK_FAKE_ARGS[@]}") rootfs=(--rootfs "$T/rootfs")
    # shellcheck disable=SC2016
    out=$(e2e_podman "$T/no-cdi" --hooks-dir "$T/hooks.d" "${podman_run[@]}" --annotation gpuslice.dev/slices=slice1 \
        "${rootfs[@]}" sh -c "$CRI_PROBE_PODMAN") || fail "podman run --annotation gpuslice.dev/slices=slice1 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo through the hooks directory"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB in a 40 GiB slice"
    assert_line_in "slice=slice1" "$out" "GPUSLICE_SLICE"
    assert_line_in "nodes=nvidia0 " "$out" "slice1's GPU node"
    wait_for 10 slice_idle slice1 || fail "slice1 not idle after podman's container exited"
    # Without the annotation the hook does not run: no GPU.
    out=$(e2e_podman "$T/no-cdi" --hooks-dir "$T/hooks.d" "${podman_run[@]}" "${rootfs[@]}" sh -c "$CRI_PROBE_PODMAN") ||
        fail "podman run without the annotation failed"
    assert_line_in "slice=" "$out" "no annotation, no slice"
    # A slice the node does not have stops the container with the hook's line.
    e2e_podman "$T/no-cdi" --hooks-dir "$T/hooks.d" "${podman_run[@]}" --annotation gpuslice.dev/slices=slice9 "${rootfs[@]}" true \
        2>"$T/podman-stderr" && fail "podman started a container asking for slice9"
    # podman 4.3 shows the hook's exit status, not its line.
    grep -qF 'setting up OCI Hooks: executing [gpuslice-runtime precreate-hook' "$T/podman-stderr" ||
        fail "podman did not name the failed hook: $(cat "$T/podman-stderr")"
}

# shellcheck disable=SC2016
CRI_PROBE_PODMAN='cuda-probe meminfo; cuda-probe alloc --path alloc --size 41G | sed "s/^/big_/"; echo "slice=$GPUSLICE_SLICE"; echo "nodes=$(ls /dev | grep "^nvidia[0-9]" | tr "\n" " ")"; true'

# gpuslice-runtime in front of plain runc, as an engine would call it: `create --bundle` with a
# bundle asking for slice1 in its environment, then start, delete. No engine, no CDI.
test_runc_runtime_bundle() {
    require_runtime_flow
    require_root
    command -v runc >/dev/null || skip "runc not installed"
    hook_node false
    make_glibc_rootfs "$T/rootfs"
    local dir=$T/bundle out id=gpuslice-e2e-rt-$$ root=$T/runc-root
    # shellcheck disable=SC2016
    make_runc_bundle "$dir" "$T/rootfs" -- sh -c "$CRI_PROBE_PODMAN"
    mkdir -p "$T/fakegpu-state"
    runc_bundle_add_bind "$dir" "$E2E_FAKEGPU_TOML" /fakegpu/config.toml ro
    runc_bundle_add_bind "$dir" "$T/fakegpu-state" /fakegpu/state
    runc_bundle_add_env "$dir" FAKEGPU_CONFIG=/fakegpu/config.toml
    runc_bundle_add_env "$dir" FAKEGPU_STATE_DIR=/fakegpu/state
    runc_bundle_add_env "$dir" GPUSLICE_SLICES=slice1
    local rt=("$E2E_RUNTIME" --gpuslice-config="$T/gpuslice.toml" --root "$root")
    defer "${rt[@]}" delete -f "$id"
    "${rt[@]}" --log "$T/runc.log" --log-format json run --bundle "$dir" "$id" </dev/null >"$T/out" 2>"$T/err" ||
        fail "gpuslice-runtime run failed: $(cat "$T/err" "$T/runc.log" 2>/dev/null)"
    out=$(cat "$T/out")
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo under runc through gpuslice-runtime"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB in a 40 GiB slice"
    assert_line_in "slice=slice1" "$out" "GPUSLICE_SLICE"
    assert_line_in "nodes=nvidia0 " "$out" "slice1's GPU node"
    jq -e '.hooks.createContainer | length == 1' "$dir/config.json" >/dev/null ||
        fail "the bundle's config.json does not have the slice's hook: $(jq .hooks "$dir/config.json")"
    "${rt[@]}" delete -f "$id" >/dev/null 2>&1
    wait_for 10 slice_idle slice1 || fail "slice1 not idle after the container was deleted"

    # A refusal goes to runc's log, where containerd's shim reads a runtime's error.
    bundle_edit "$dir" '.process.env |= map(if startswith("GPUSLICE_SLICES=") then "GPUSLICE_SLICES=slice7" else . end)'
    "${rt[@]}" --log "$T/runc.log" --log-format json run --bundle "$dir" "$id-2" </dev/null 2>"$T/err" &&
        fail "a bundle asking for slice7 ran"
    grep -qF 'gpuslice-runtime: unknown slice slice7' "$T/err" || fail "no line on stderr: $(cat "$T/err")"
    jq -e 'select(.level == "error") | .msg | startswith("gpuslice-runtime: unknown slice slice7")' "$T/runc.log" >/dev/null ||
        fail "the refusal is not in runc's JSON log: $(cat "$T/runc.log")"
}
