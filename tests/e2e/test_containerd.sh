# shellcheck shell=bash
# containerd's CRI, driven the way the kubelet drives it (tests/cri-client: RunPodSandbox,
# CreateContainer, StartContainer, ContainerStatus), on a containerd of the tests' own: its
# config, root, state and socket, never Docker's managed one. Two paths:
#
# - CDI: the container asks for `gpuslice.dev/vgpu=slice1` in CreateContainer's CDIDevices,
#   as the kubelet does with a device plugin's CDI names. `gpuslice-cdi setup containerd`
#   turns CDI on in the config and containerd is restarted with it.
# - gpuslice-runtime (containerd 1.6 has no CDI): `setup containerd --runtime` adds the runtime
#   handler `gpuslice`; the pod runs with it and the container asks with the annotation
#   gpuslice.dev/slices, which the handler passes through.
#
# Images come from Docker (`docker save` of the imported images, `ctr images import`): a
# busybox sandbox ("pause") image and the glibc image with cuda-probe. The node is test_hook.sh's.

E2E_CONTAINERD_RUN=$E2E_RUN_DIR/containerd
E2E_CONTAINERD_SOCK=$E2E_CONTAINERD_RUN/containerd.sock
# Images and snapshots stay between runs (an import takes seconds); the state does not.
E2E_CONTAINERD_ROOT=$E2E_STATE_DIR/containerd
E2E_PAUSE_IMAGE=gpuslice-e2e/pause:1
E2E_CRI_CLIENT=$REPO_ROOT/target/cri-client/debug/gpuslice-cri-client

require_containerd() {
    require_root
    command -v containerd >/dev/null || skip "containerd not installed (tests/e2e/install-deps.sh installs it with Docker)"
    command -v ctr >/dev/null || skip "ctr not installed (it comes with containerd)"
    local version
    version=$(containerd --version | awk '{print $3}')
    dpkg --compare-versions "${version#v}" ge 1.7 || skip "containerd $version is older than 1.7 (no CDI)"
    # The images are made with Docker.
    require_docker
}

# build_cri_client: the CRI test client, built once per change into target/cri-client.
build_cri_client() {
    command -v protoc >/dev/null || skip "no protoc (tests/e2e/install-deps.sh installs protobuf-compiler): the CRI client compiles the CRI protos"
    (cd "$REPO_ROOT/tests/cri-client" && CARGO_INCREMENTAL=0 cargo build --quiet --target-dir "$REPO_ROOT/target/cri-client") ||
        fail "building tests/cri-client failed"
    [[ -x $E2E_CRI_CLIENT ]] || fail "no $E2E_CRI_CLIENT after the build"
}

# has_cap_sys_resource: whether this shell's bounding set holds CAP_SYS_RESOURCE (bit 24),
# which lowering a process's oom_score_adj below its parent's needs.
has_cap_sys_resource() {
    local bounding
    bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    (((0x$bounding >> 24) & 1))
}

# containerd_base_config FILE: a version 2 config of our own, without CDI.
#
# The CRI plugin gives a pod sandbox oom_score_adj -998 (and containers a value from their QoS),
# which runc's init writes to /proc/self/oom_score_adj; without CAP_SYS_RESOURCE (a VM or
# container that drops it from the bounding set, as this test machine does) that write is
# refused and runc fails with "can't get final child's PID from pipe: EOF" (its log.json says
# "failed to update /proc/self/oom_score_adj: Permission denied"). There the config sets
# restrict_oom_score_adj, which clamps the scores to containerd's own, as for rootless
# containerd.
containerd_base_config() {
    mkdir -p "$T/cni/bin" "$T/cni/conf"
    local restrict_oom=false
    has_cap_sys_resource || restrict_oom=true
    cat >"$1" <<EOF
# The end-to-end tests' own containerd (tests/e2e/test_containerd.sh).
version = 2
root = "$E2E_CONTAINERD_ROOT"
state = "$E2E_CONTAINERD_RUN/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$E2E_CONTAINERD_SOCK"

[ttrpc]
  address = "$E2E_CONTAINERD_SOCK.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  # Nothing can be pulled here: the sandbox image is imported from Docker.
  sandbox_image = "docker.io/$E2E_PAUSE_IMAGE"
  # true only without CAP_SYS_RESOURCE (see containerd_base_config).
  restrict_oom_score_adj = $restrict_oom
  # Pods use the host's network: no CNI plugin is needed.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$T/cni/bin"
    conf_dir = "$T/cni/conf"
EOF
}

# `command`: run.sh sources every test file into one shell, and test_hostile_tenant.sh has a
# function named ctr.
ctr_e2e() { command ctr --address "$E2E_CONTAINERD_SOCK" --namespace k8s.io "$@"; }

containerd_pid() { pgrep -f -x "containerd --config $T/containerd.toml" | head -n1; }

# start_containerd: containerd with $T/containerd.toml, in its own session and without our
# descriptors (a daemon must not hold the run's lock); stopped when the test ends.
start_containerd() {
    mkdir -p "$E2E_CONTAINERD_RUN" "$E2E_CONTAINERD_ROOT"
    (
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-"
        done
        exec setsid -f containerd --config "$T/containerd.toml" >>"$T/containerd.log" 2>&1 </dev/null
    )
    defer stop_containerd
    wait_for 30 command ctr --address "$E2E_CONTAINERD_SOCK" version ||
        fail "containerd did not answer within 30 s: $(timeout 10 ctr --address "$E2E_CONTAINERD_SOCK" version 2>&1 | tail -n 3)"$'\n'"$(tail -n 20 "$T/containerd.log")"
}

stop_containerd() {
    local pid
    pid=$(containerd_pid) || return 0
    [[ -n $pid ]] || return 0
    kill "$pid"
    wait_for 20 bash -c "! kill -0 $pid" || kill -9 "$pid"
}

restart_containerd() {
    stop_containerd
    start_containerd
}

# import_image TAG: Docker's image TAG into containerd's k8s.io namespace, once.
import_image() {
    local tag=$1
    ctr_e2e images ls -q | grep -qxF "docker.io/$tag" && return 0
    e2e_docker save "$tag" -o "$T/image.tar" || fail "docker save $tag failed"
    ctr_e2e images import "$T/image.tar" >/dev/null || fail "ctr images import $tag failed"
    rm -f "$T/image.tar"
}

# containerd_images: the sandbox image and the glibc image in containerd; prints the latter.
containerd_images() {
    local image
    if ! e2e_docker image inspect "$E2E_PAUSE_IMAGE" >/dev/null 2>&1; then
        make_busybox_rootfs "$T/pause-rootfs"
        tar -C "$T/pause-rootfs" -c . |
            e2e_docker import --change 'CMD ["/bin/sleep", "2147483647"]' - "$E2E_PAUSE_IMAGE" >/dev/null
    fi
    import_image "$E2E_PAUSE_IMAGE"
    image=$(e2e_glibc_image)
    import_image "$image"
    printf '%s\n' "$image"
}

# cri_run ARGS... -- COMMAND...: the CRI client against our containerd with the simulated
# GPU's mounts and variables; prints the container's output, returns its status.
cri_run() {
    local fake=() i
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state")
    for ((i = 0; i < ${#HOOK_FAKE_ARGS[@]}; i += 2)); do
        case ${HOOK_FAKE_ARGS[i]} in
            -v) fake+=(--mount "${HOOK_FAKE_ARGS[i + 1]}") ;;
            -e) fake+=(--env "${HOOK_FAKE_ARGS[i + 1]}") ;;
        esac
    done
    "$E2E_CRI_CLIENT" --socket "$E2E_CONTAINERD_SOCK" --timeout 60 "${fake[@]}" "$@" 2>"$T/cri-stderr"
    local status=$?
    cat "$T/cri-stderr" >&2
    return $status
}

# The probe the CRI tests run: the slice's view, 41 GiB refused, the slice's name and nodes.
# slice2 and slice3 are on GPU 1, CUDA device 1: the simulated driver lists every GPU, whatever
# nodes the container has.
# shellcheck disable=SC2016
CRI_PROBE='d=0; case $GPUSLICE_SLICE in slice2 | slice3) d=1 ;; esac; cuda-probe --device $d meminfo; cuda-probe --device $d alloc --path alloc --size 41G | sed "s/^/big_/"; echo "slice=$GPUSLICE_SLICE"; echo "nodes=$(ls /dev | grep "^nvidia[0-9]" | tr "\n" " ")"; true'

assert_cri_slice_view() {
    local out=$1 slice=$2 minor=$3
    printf '%s\n' "$out"
    assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "cuMemGetInfo in the CRI container"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB in a 40 GiB slice"
    assert_line_in "slice=$slice" "$out" "GPUSLICE_SLICE"
    assert_line_in "nodes=nvidia$minor " "$out" "the slice's GPU node and no other"
}

test_containerd_cri_cdi() {
    require_hook_flow
    require_containerd
    build_cri_client
    hook_node false
    containerd_base_config "$T/containerd.toml"
    start_containerd
    local image out
    image=$(containerd_images)

    # Without CDI, containerd ignores the CDI device: the container has no GPU.
    out=$(cri_run --cdi-device gpuslice.dev/vgpu=slice1 "$image" -- sh -c "$CRI_PROBE") ||
        fail "the CRI run without CDI failed: $(cat "$T/cri-stderr")"
    printf '%s\n' "$out"
    assert_line_in "slice=" "$out" "no slice without CDI"

    # gpuslice-cdi setup turns CDI on (with the spec's directory); containerd restarts with it.
    out=$("$E2E_GENERATOR" setup containerd --file "$T/containerd.toml" --config "$T/gpuslice.toml") ||
        fail "gpuslice-cdi setup containerd failed"
    printf '%s\n' "$out"
    grep -q 'CDI turned on' <<<"$out" || fail "setup did not turn CDI on: $out"
    grep -qF "\"$T/cdi\"" "$T/containerd.toml" || fail "setup did not add the spec dir $T/cdi: $(cat "$T/containerd.toml")"
    restart_containerd
    out=$(cri_run --cdi-device gpuslice.dev/vgpu=slice1 "$image" -- sh -c "$CRI_PROBE") ||
        fail "the CRI run with CDIDevices gpuslice.dev/vgpu=slice1 failed: $(cat "$T/cri-stderr")"
    assert_cri_slice_view "$out" slice1 0
    out=$(cri_run --cdi-device gpuslice.dev/vgpu=slice2 "$image" -- sh -c "$CRI_PROBE") ||
        fail "the CRI run with slice2 failed"
    assert_cri_slice_view "$out" slice2 1
    wait_for 10 slice_idle slice1 || fail "slice1 not idle after the CRI container was removed"

    # Annotations make the spec CDI 0.6.0. containerd reads it from 1.7.13 (CDI 0.6.2): no
    # warning about containerd, and the container still gets its slice. Before, generate warns
    # about the installed containerd and the device is unresolvable.
    sed -i 's/^annotations = .*/annotations = true/' "$T/gpuslice.toml"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" 2>"$T/generate.err" || fail "generate with annotations failed: $(cat "$T/generate.err")"
    cat "$T/generate.err"
    grep -q '^cdiVersion: 0.6.0' "$T/cdi/gpuslice.yaml" || fail "the spec with annotations is not 0.6.0: $(head -n 3 "$T/cdi/gpuslice.yaml")"
    local version
    version=$(containerd --version | awk '{print $3}')
    if dpkg --compare-versions "${version#v}" ge 1.7.13; then
        grep -q 'warning: containerd' "$T/generate.err" && fail "generate warned about containerd $version, which reads 0.6.0: $(cat "$T/generate.err")"
        out=$(cri_run --cdi-device gpuslice.dev/vgpu=slice1 "$image" -- sh -c "$CRI_PROBE") ||
            fail "containerd $version did not use the CDI 0.6.0 spec: $(cat "$T/cri-stderr")"
        assert_cri_slice_view "$out" slice1 0
    else
        grep -q '^gpuslice-cdi: warning: containerd .* reads CDI specs up to 0.5.0, and this spec is 0.6.0' "$T/generate.err" ||
            fail "generate did not warn about containerd: $(cat "$T/generate.err")"
        cri_run --cdi-device gpuslice.dev/vgpu=slice1 "$image" -- true && fail "containerd $version used a CDI 0.6.0 spec"
        grep -q 'unresolvable CDI devices' "$T/cri-stderr" || fail "not refused as unresolvable: $(cat "$T/cri-stderr")"
    fi
}

test_containerd_cri_runtime() {
    require_runtime_flow
    require_containerd
    build_cri_client
    hook_node false
    containerd_base_config "$T/containerd.toml"
    # The handler runs this build with the test's config (packages install /usr/bin/gpuslice-runtime).
    printf '#!/bin/sh\nexec %q --gpuslice-config=%q "$@"\n' "$E2E_RUNTIME" "$T/gpuslice.toml" >"$T/gpuslice-runtime"
    chmod 755 "$T/gpuslice-runtime"
    local image out
    out=$("$E2E_GENERATOR" setup containerd --runtime --runtime-path "$T/gpuslice-runtime" \
        --file "$T/containerd.toml" --config "$T/gpuslice.toml") || fail "gpuslice-cdi setup containerd --runtime failed"
    printf '%s\n' "$out"
    grep -q 'enable_cdi' "$T/containerd.toml" && fail "--runtime turned CDI on: $(cat "$T/containerd.toml")"
    start_containerd
    image=$(containerd_images)
    out=$(cri_run --runtime-handler gpuslice --annotation gpuslice.dev/slices=slice1 "$image" -- sh -c "$CRI_PROBE") ||
        fail "the CRI run with the runtime handler gpuslice failed: $(cat "$T/cri-stderr")"
    assert_cri_slice_view "$out" slice1 0
    # The pod's annotation reaches the container (the sandbox itself gets no slice).
    out=$(cri_run --runtime-handler gpuslice --pod-annotation gpuslice.dev/slices=slice2 "$image" -- sh -c "$CRI_PROBE") ||
        fail "the CRI run with the pod annotation failed: $(cat "$T/cri-stderr")"
    assert_cri_slice_view "$out" slice2 1
    # A slice this node does not have: CreateContainer or StartContainer fails with the runtime's line.
    cri_run --runtime-handler gpuslice --annotation gpuslice.dev/slices=slice9 "$image" -- true &&
        fail "a container asking for slice9 started"
    grep -qF 'gpuslice-runtime: unknown slice slice9' "$T/cri-stderr" ||
        fail "containerd did not report gpuslice-runtime's line: $(cat "$T/cri-stderr")"
    wait_for 10 slice_idle slice1 || fail "slice1 not idle after the CRI container was removed"
}
