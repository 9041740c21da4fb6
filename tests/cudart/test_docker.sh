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

# The Python images: the Debian bookworm root filesystem install.sh makes with debootstrap
# (python3 and nothing else), a virtual environment /opt/<framework> holding the framework's
# packages (copied from its environment in the cache, which the host's python3 of the same
# minor version made), its runtime's libraries in /opt/cudart-lib and the tier's check scripts
# in /opt/check. One tag per content of those inputs, so the image is imported once and kept
# by Docker between runs.
CUDART_ROOTFS=$CUDART_CACHE/rootfs/bookworm-python3.tar
# What the image is made of beyond its inputs: change it to make the images again.
CUDART_PYTHON_IMAGE_RECIPE=1

# cudart_python_image: the image for framework $RT (require_framework first: PROG and
# CUDART_LIBS are set); prints its tag. Skips without the root filesystem or when its python
# is not the environment's.
cudart_python_image() {
    local dir=$T/python-image root env_python image_python tag site
    [[ -f $CUDART_ROOTFS && -f $CUDART_ROOTFS.installed ]] ||
        skip "no container root filesystem $CUDART_ROOTFS (run with --install as root)"
    env_python=$("$PROG" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "$PROG does not run"
    tag=gpuslice-cudart/$RT:$(
        {
            printf '%s\n' "$CUDART_PYTHON_IMAGE_RECIPE" "$env_python"
            cat "$CUDART_ROOTFS.installed" "$CUDART_CACHE/$RT/.installed"
            stat -c '%s %Y' "$CUDART_ROOTFS"
            sha256sum "$CUDART_DIR"/*-check.py "$CUDART_LIBS"/*
        } | sha256sum | cut -c1-12
    )
    if e2e_docker image inspect "$tag" >/dev/null 2>&1; then
        printf '%s\n' "$tag"
        return 0
    fi
    root=$dir/root
    mkdir -p "$root"
    tar -C "$root" -xf "$CUDART_ROOTFS" || fail "unpacking $CUDART_ROOTFS failed"
    image_python=$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
        fail "python3 does not run in $CUDART_ROOTFS"
    [[ $image_python == "$env_python" ]] ||
        skip "the image's python is $image_python, $RT's environment was made with $env_python"
    chroot "$root" python3 -m venv --without-pip "/opt/$RT" || fail "python3 -m venv in the image failed"
    site=lib/python$env_python/site-packages
    cp -a "$CUDART_CACHE/$RT/$site/." "$root/opt/$RT/$site/" || fail "copying $RT's packages failed"
    mkdir -p "$root/opt/cudart-lib" "$root/opt/check"
    cp -a "$CUDART_LIBS/." "$root/opt/cudart-lib/"
    cp "$CUDART_DIR"/*-check.py "$root/opt/check/"
    docker_image_from_rootfs "$root" "$tag" || fail "docker import of $tag failed"
    rm -rf "$dir"
    # Each is some 600 MB: the images of this framework's older inputs go (one in use stays).
    e2e_docker images --format '{{.Repository}}:{{.Tag}}' "gpuslice-cudart/$RT" | grep -vxF "$tag" |
        xargs -r "$(e2e_docker_bin)" rmi >/dev/null 2>&1 || true
    printf '%s\n' "$tag"
}

# docker_slice_setup: the end-to-end tier's node with its spec installed for Docker, under
# that tier's lock (it shares the spec directory).
docker_slice_setup() {
    require_hook_flow
    require_docker
    mkdir -p "$E2E_RUN_DIR"
    exec 8>"$E2E_RUN_DIR/lock"
    flock -w 600 8 || fail "another end-to-end run holds $E2E_RUN_DIR/lock"
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
}

# slice0 (40 GiB, 50 %) in a container: the memory view, the limit, a kernel.
test_docker_slice() {
    docker_slice_setup
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
