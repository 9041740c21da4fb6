# shellcheck shell=bash
# Self-tests of the harness: a hand-written spec (fixtures/handwritten-spec.yaml) through each
# engine, with a recording hook in place of gpuslice-hook. They need nothing from the Rust
# build, so they prove the engines, the spec plumbing and the assertions on any branch.

# handwritten_spec DIR: render the fixture into DIR/gpuslice.yaml over a fresh dev root; the
# hook records its calls in $T/hook.log.
handwritten_spec() {
    local dir=$1 uvm
    uvm=$(make_devroot "$T/devroot")
    render_template "$E2E_DIR/fixtures/recording-hook.sh" "$T/hook.sh" LOG="$T/hook.log"
    chmod 755 "$T/hook.sh"
    : >"$T/hook.log"
    render_template "$E2E_DIR/fixtures/handwritten-spec.yaml" "$dir/gpuslice.yaml" \
        DEVROOT="$T/devroot" HOOK="$T/hook.sh" UVM_MAJOR="$uvm"
    printf '%s\n' "$uvm"
}

# assert_hooks_ran SLICE: createContainer ran while the container was being created and
# poststop after it stopped, both with the slice's arguments.
assert_hooks_ran() {
    local slice=$1
    sed "s/^/hook: /" "$T/hook.log"
    wait_for 10 grep -qx "poststop --slice $slice status=stopped" "$T/hook.log" ||
        fail "no poststop hook call for $slice in hook.log:"$'\n'"$(cat "$T/hook.log")"
    assert_line_in "create-container --slice $slice status=creating" "$(cat "$T/hook.log")" "hook calls"
    : >"$T/hook.log"
}

# assert_all_view OUTPUT UVM: the "all" device brings both GPUs and the control nodes.
assert_all_view() {
    local out=$1 uvm=$2
    printf '%s\n' "$out"
    assert_line_in "/dev/nvidia0 character 195:0" "$out" "all: GPU 0"
    assert_line_in "/dev/nvidia1 character 195:1" "$out" "all: GPU 1"
    assert_line_in "/dev/nvidiactl character 195:255" "$out" "all: nvidiactl"
    assert_line_in "/dev/nvidia-uvm character $uvm:0" "$out" "all: nvidia-uvm"
    assert_line_in "GPUSLICE_SLICE=all" "$out" "all: environment"
}

test_harness_podman_handwritten_spec() {
    require_podman
    local specdir uvm out
    specdir=$(new_spec_dir)
    uvm=$(handwritten_spec "$specdir")
    make_busybox_rootfs "$T/rootfs"

    out=$(podman_slice "$specdir" "$T/rootfs" gpuslice.dev/vgpu=slice1)
    assert_slice_view "$out" slice1 0
    assert_line_in "/dev/nvidia-uvm character $uvm:0" "$out" "spec-level edits"
    assert_hooks_ran slice1

    out=$(podman_slice "$specdir" "$T/rootfs" gpuslice.dev/vgpu=slice2)
    assert_slice_view "$out" slice2 1
    assert_hooks_ran slice2

    out=$(podman_slice "$specdir" "$T/rootfs" gpuslice.dev/vgpu=all)
    assert_all_view "$out" "$uvm"
}

test_harness_docker_handwritten_spec() {
    require_docker
    local specdir uvm out image
    specdir=$(new_spec_dir)
    uvm=$(handwritten_spec "$specdir")
    install_docker_spec "$specdir/gpuslice.yaml"
    image=$(e2e_busybox_image)

    out=$(docker_slice "$image" gpuslice.dev/vgpu=slice1)
    assert_slice_view "$out" slice1 0
    assert_line_in "/dev/nvidia-uvm character $uvm:0" "$out" "spec-level edits"
    assert_hooks_ran slice1

    out=$(docker_slice "$image" gpuslice.dev/vgpu=slice2)
    assert_slice_view "$out" slice2 1
    assert_hooks_ran slice2

    out=$(docker_slice "$image" gpuslice.dev/vgpu=all)
    assert_all_view "$out" "$uvm"
}
