# shellcheck shell=bash
# The kubelet's path for a pod that asks for a slice, with everything real but the kubelet:
# the real gpuslice-device-plugin, a test kubelet (`gpuslice-cri-client kubelet`, which speaks
# the kubelet's side of deviceplugin/v1beta1 on a temporary kubelet directory: Registration,
# ListAndWatch, GetPreferredAllocation, Allocate) and containerd 1.7 through its CRI, given the
# plugin's answer as the kubelet gives it (CDI names in CreateContainer's CDIDevices, the
# answer's annotations as the container's). The containerd, images and node are
# test_containerd.sh's and test_hook.sh's.

E2E_DEVICE_PLUGIN=${E2E_DEVICE_PLUGIN:-$REPO_ROOT/target/release/gpuslice-device-plugin}

# start_device_plugin: the plugin on the node of hook_node, with a new directory as the
# kubelet's device plugin directory ($E2E_KUBELET_DIR: short, for the sockets' 108-byte limit);
# without our descriptors (it must not hold the run's lock); stopped with SIGTERM when the test
# ends.
start_device_plugin() {
    mkdir -p "$E2E_RUN_DIR"
    E2E_KUBELET_DIR=$(mktemp -d "$E2E_RUN_DIR/kubelet.XXXXXX") || fail "mktemp in $E2E_RUN_DIR"
    defer rm -rf "$E2E_KUBELET_DIR"
    (
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-"
        done
        FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML RUST_LOG=info exec "$E2E_DEVICE_PLUGIN" --config "$T/gpuslice.toml" \
            --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --device-plugin-dir "$E2E_KUBELET_DIR" >>"$T/device-plugin.log" 2>&1 </dev/null
    ) &
    E2E_DEVICE_PLUGIN_PID=$!
    defer stop_device_plugin
}

stop_device_plugin() {
    kill -TERM "$E2E_DEVICE_PLUGIN_PID" 2>/dev/null || return 0
    wait_for 10 bash -c "! kill -0 $E2E_DEVICE_PLUGIN_PID 2>/dev/null" || kill -9 "$E2E_DEVICE_PLUGIN_PID"
}

# kubelet_run ARGS...: the test kubelet against the plugin and our containerd, with the
# simulated GPU's mounts and variables (as cri_run); its own lines go to $T/kubelet-stderr and
# the test log, the container's output to stdout. Returns its status.
kubelet_run() {
    local fake=() i
    mapfile -t HOOK_FAKE_ARGS < <(fakegpu_run_args "$T/fakegpu-state")
    for ((i = 0; i < ${#HOOK_FAKE_ARGS[@]}; i += 2)); do
        case ${HOOK_FAKE_ARGS[i]} in
            -v) fake+=(--mount "${HOOK_FAKE_ARGS[i + 1]}") ;;
            -e) fake+=(--env "${HOOK_FAKE_ARGS[i + 1]}") ;;
        esac
    done
    "$E2E_CRI_CLIENT" kubelet --dir "$E2E_KUBELET_DIR" --register-timeout 30 --socket "$E2E_CONTAINERD_SOCK" \
        --timeout 60 "${fake[@]}" "$@" 2>"$T/kubelet-stderr"
    local status=$?
    cat "$T/kubelet-stderr" >&2
    return $status
}

# The GPU (device node minor) of a slice of test_hook.sh's node: two slices per GPU.
slice_minor() {
    case $1 in
        slice0 | slice1) echo 0 ;;
        slice2 | slice3) echo 1 ;;
        *) fail "no slice $1 on this node" ;;
    esac
}

# kubernetes_node: CDI on in our containerd, the plugin running; prints the glibc image.
kubernetes_node() {
    require_hook_flow
    require_containerd
    require_file "$E2E_DEVICE_PLUGIN" "make release"
    build_cri_client
    hook_node false
    containerd_base_config "$T/containerd.toml"
    "$E2E_GENERATOR" setup containerd --file "$T/containerd.toml" --config "$T/gpuslice.toml" >/dev/null ||
        fail "gpuslice-cdi setup containerd failed"
    start_containerd
    start_device_plugin
}

# kubelet_pod CDI_PATH IMAGE: one pod asking for one slice, the answer passed as CDI_PATH
# (field, annotations, both); checks the container's view of the slice it was allocated.
kubelet_pod() {
    local cdi=$1 image=$2 out slice
    out=$(kubelet_run --count 1 --cdi "$cdi" "$image" -- sh -c "$CRI_PROBE") ||
        fail "the pod through the plugin's answer ($cdi) failed: $(cat "$T/kubelet-stderr")"$'\n'"$(tail -n 20 "$T/device-plugin.log")"
    slice=$(sed -n 's/^kubelet: allocated //p' "$T/kubelet-stderr")
    [[ $slice =~ ^slice[0-9]+$ ]] || fail "not one slice allocated: '$slice'"
    assert_line_in "kubelet: cdi_device gpuslice.dev/vgpu=$slice" "$(cat "$T/kubelet-stderr")" "Allocate's CDI name"
    grep -q "^kubelet: annotation cdi.k8s.io/.*=gpuslice.dev/vgpu=$slice\$" "$T/kubelet-stderr" ||
        fail "Allocate's answer has no cdi.k8s.io/ annotation for $slice: $(cat "$T/kubelet-stderr")"
    assert_cri_slice_view "$out" "$slice" "$(slice_minor "$slice")"
    wait_for 10 slice_idle "$slice" || fail "$slice not idle after the pod's container was removed"
}

test_kubernetes_pod_gets_its_slice_through_the_device_plugin() {
    kubernetes_node
    local image
    image=$(containerd_images)
    kubelet_pod both "$image"
    # Every healthy slice advertised, under the default resource.
    grep -q '^kubelet: registered gpuslice.dev/vgpu version=v1beta1 ' "$T/kubelet-stderr" ||
        fail "the plugin did not register gpuslice.dev/vgpu: $(cat "$T/kubelet-stderr")"
    grep -q '^kubelet: devices slice0=Healthy slice1=Healthy slice2=Healthy slice3=Healthy$' "$T/kubelet-stderr" ||
        fail "ListAndWatch did not list the four slices healthy: $(grep devices "$T/kubelet-stderr")"
}

# containerd 1.7 applies either half of the answer alone: the CRI's CDIDevices (what a kubelet
# 1.28+ with DevicePluginCDIDevices sends) and the cdi.k8s.io/ annotation (what an older
# kubelet passes through). README "Kubernetes" says so.
test_kubernetes_containerd_applies_the_cdi_field_and_the_annotation_each_alone() {
    kubernetes_node
    local image
    image=$(containerd_images)
    kubelet_pod field "$image"
    grep -q '^kubelet: annotation cdi.k8s.io/' "$T/kubelet-stderr" || fail "no annotation in the answer"
    kubelet_pod annotations "$image"
}

test_kubernetes_unknown_device_is_a_grpc_error() {
    kubernetes_node
    # A kubelet asking for a device the plugin never advertised: a gRPC error, no container.
    kubelet_run --device slice9 && fail "Allocate of slice9 succeeded: $(cat "$T/kubelet-stderr")"
    grep -q '^kubelet: Allocate: .*slice9' "$T/kubelet-stderr" ||
        fail "no gRPC error naming slice9 from Allocate: $(cat "$T/kubelet-stderr")"
    kill -0 "$E2E_DEVICE_PLUGIN_PID" || fail "the plugin died on an unknown device: $(tail -n 20 "$T/device-plugin.log")"
    # It still answers (this kubelet is a restarted one: the plugin registered again).
    kubelet_run --count 1 || fail "the plugin did not answer after the bad request: $(cat "$T/kubelet-stderr")"
    grep -q '^kubelet: allocated slice[0-9]$' "$T/kubelet-stderr" || fail "no slice allocated after the bad request"
}
