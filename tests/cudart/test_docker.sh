# shellcheck shell=bash
# The same program in a container: Docker with `--device gpuslice.dev/vgpu=slice0`, the spec
# written by gpuslice-cdi, the static hook bringing in the simulated driver and the shim (the
# end-to-end tier's node and fixtures: tests/e2e/test_hook.sh's hook_node), an image made
# with `docker import` from a glibc rootfs holding cudart-check and its libcudart. Runs under
# the end-to-end tier's lock, as it shares that tier's Docker spec directory.

# The end-to-end tier's node (hook_node, docker_gpu, require_hook_flow) and require_generator.
# shellcheck source=tests/e2e/test_cdi_generated.sh
. "$E2E_DIR/test_cdi_generated.sh"
# shellcheck source=tests/e2e/test_hook.sh
. "$E2E_DIR/test_hook.sh"

# cudart_image: an image with this runtime's cudart-check, cudart-check-ptds and libcudart in
# /opt/cudart (and what they link against); prints its tag (one per content).
cudart_image() {
    local dir=$T/cudart-image root path tag
    root=$dir/rootfs
    make_glibc_rootfs "$root"
    mkdir -p "$root/opt/cudart"
    cp "$(dirname "$CHECK")"/* "$root/opt/cudart/"
    while read -r path; do
        copy_host_file "$root" "$path"
    done < <(ldd "$(dirname "$CHECK")"/libcudart.so.* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
    ldconfig -r "$root" || fail "ldconfig -r $root failed"
    rm -f "$root/var/cache/ldconfig/aux-cache"
    tag=gpuslice-cudart/check:$(rootfs_content_hash "$root")
    e2e_docker image inspect "$tag" >/dev/null 2>&1 || docker_image_from_rootfs "$root" "$tag"
    printf '%s\n' "$tag"
}

# slice0 (40 GiB, 50 %) in a container: the memory view, the limit, a kernel.
test_docker_slice() {
    require_hook_flow
    require_docker
    mkdir -p "$E2E_RUN_DIR"
    exec 8>"$E2E_RUN_DIR/lock"
    flock -w 600 8 || fail "another end-to-end run holds $E2E_RUN_DIR/lock"
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out
    image=$(cudart_image)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" /opt/cudart/cudart-check meminfo) ||
        fail "cudart-check meminfo in the container failed"
    printf '%s\n' "$out"
    assert_eq "cudaMemGetInfo total in the container" "$(kv total "$out")" "$CUDART_SLICE_BYTES"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" /opt/cudart/cudart-check fill --path malloc --chunk 1G) ||
        fail "cudart-check fill in the container failed"
    printf '%s\n' "$out"
    assert_eq "the error past the limit" "$(kv stop_error "$out")" cudaErrorMemoryAllocation
    assert_eq "1 GiB allocations that fit" "$(kv chunks "$out")" 39
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice0 "$image" /opt/cudart/cudart-check-ptds kernel --path capture --ns 20000000) ||
        fail "cudart-check-ptds kernel in the container failed"
    printf '%s\n' "$out"
    assert_between "device time between the events (ms)" "$(kv elapsed_ms "$out")" 20 200
}
