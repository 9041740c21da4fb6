# shellcheck shell=bash
# Self-tests of the hook tests' fixtures (lib_slice.sh) through the real engines: the simulated
# driver root, the glibc images with cuda-probe, the simulated GPU inside containers (its
# libraries bind-mounted by hand, no hook), runc bundles with hooks, and the hostile images.

GIB=1073741824

# The line cuda-probe prints when no libcuda.so.1 can be loaded (exit status 1).
PROBE_NO_DRIVER='cuda-probe: dlopen(libcuda.so.1) failed: libcuda.so.1: cannot open shared object file: No such file or directory'
# What the loader says when cuda-probe-direct's DT_NEEDED libcuda.so.1 is missing (status 127).
PROBE_DIRECT_NO_DRIVER='cuda-probe-direct: error while loading shared libraries: libcuda.so.1: cannot open shared object file: No such file or directory'

# Inside a glibc image without a driver: both probes fail cleanly, the image's loader works.
# shellcheck disable=SC2016
NO_DRIVER_SCRIPT='cuda-probe info; echo "probe_status=$?"; cuda-probe-direct info; echo "direct_status=$?"
[ -x /sbin/ldconfig ] && echo has_ldconfig; [ -e /etc/ld.so.cache ] && echo has_cache; ldconfig -p 2>/dev/null | grep -q "libc.so.6 " && echo cache_lists_libc; true'

# assert_no_driver_view OUTPUT LDCONFIG: what NO_DRIVER_SCRIPT printed in an image made with
# (LDCONFIG=1) or without (0) ldconfig.
assert_no_driver_view() {
    local out=$1 ldconfig=$2
    printf '%s\n' "$out"
    assert_line_in "$PROBE_NO_DRIVER" "$out" "cuda-probe without a driver"
    assert_line_in probe_status=1 "$out" "cuda-probe's status without a driver"
    assert_line_in "$PROBE_DIRECT_NO_DRIVER" "$out" "cuda-probe-direct without a driver"
    assert_line_in direct_status=127 "$out" "cuda-probe-direct's status without a driver"
    if ((ldconfig)); then
        assert_line_in has_ldconfig "$out" "image with ldconfig"
        assert_line_in has_cache "$out" "image with ldconfig"
        assert_line_in cache_lists_libc "$out" "the image's ld.so.cache"
    else
        ! grep -qxE 'has_ldconfig|has_cache' <<<"$out" || fail "--no-ldconfig image has ldconfig or ld.so.cache"
    fi
}

test_fixtures_driver_root() {
    require_root
    require_file "$E2E_FAKEGPU_LIB" "the simulated GPU"
    local root=$T/driver lib cache ver inodes info
    make_driver_root "$root"
    lib=$root/$E2E_DRIVER_LIBDIR
    ver=$(fakegpu_driver_version)

    cache=$(ldconfig -p -C "$root/etc/ld.so.cache")
    printf '%s\n' "$cache"
    for name in libcuda.so.1 libcuda.so libnvidia-ml.so.1 libnvidia-ptxjitcompiler.so.1; do
        grep -qE "^[[:space:]]+$name \(libc6,x86-64\) => /$E2E_DRIVER_LIBDIR/$name\$" <<<"$cache" ||
            fail "the driver root's ld.so.cache does not list $name => /$E2E_DRIVER_LIBDIR/$name"
    done
    [[ $(readlink "$lib/libcuda.so.1") == "libcuda.so.$ver" ]] || fail "libcuda.so.1 -> $(readlink "$lib/libcuda.so.1")"
    [[ $(readlink "$lib/libcuda.so") == libcuda.so.1 ]] || fail "libcuda.so -> $(readlink "$lib/libcuda.so")"
    inodes=$(stat -c %i "$lib/libcuda.so.$ver" "$lib/libnvidia-ml.so.$ver" "$lib/libnvidia-ptxjitcompiler.so.$ver" | sort -u | wc -l)
    [[ $inodes -eq 3 ]] || fail "the three driver libraries must be distinct files"
    if command -v patchelf >/dev/null; then
        [[ $(patchelf --print-soname "$lib/libnvidia-ml.so.$ver") == libnvidia-ml.so.1 ]] || fail "libnvidia-ml's SONAME"
    fi

    info=$(cat "$root/proc/driver/nvidia/gpus/0000:02:00.0/information")
    printf '%s\n' "$info"
    assert_line_in $'GPU UUID: \t GPU-6a3f1d2e-0001-4e2a-9c1b-000000000001' "$info" "GPU 1's information"
    assert_line_in $'Bus Location: \t 0000:02:00.0' "$info" "GPU 1's information"
    assert_line_in $'Device Minor: \t 1' "$info" "GPU 1's information"
    assert_line_in $'Model: \t\t NVIDIA H100 80GB HBM3 (simulated)' "$info" "GPU 1's information"
    [[ -x $root/usr/bin/nvidia-smi ]] || fail "no nvidia-smi in the driver root"
    grep -q SIMULATED "$root/usr/bin/nvidia-smi" || fail "the driver root's nvidia-smi does not say it is simulated"

    # Another config: its driver version names the files, its GPUs the /proc entries.
    cat >"$T/one.toml" <<'EOF'
driver_version = "550.54.15"
cuda_version = 12040

[[gpu]]
uuid = "GPU-0000aaaa-1111-2222-3333-444455556666"  # a comment
name = "Simulated A100"
memory = "40GiB"
sm_count = 108
minor = 3
pci_bus_id = "00000000:3B:00.0"

[[gpu.mig]]
uuid = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
profile = "1g.10gb"
memory = "10GiB"
sm_count = 16
EOF
    make_driver_root "$T/driver2" "$T/one.toml"
    [[ -f $T/driver2/$E2E_DRIVER_LIBDIR/libcuda.so.550.54.15 ]] || fail "no libcuda.so.550.54.15"
    [[ $(ls "$T/driver2/proc/driver/nvidia/gpus") == 0000:3b:00.0 ]] ||
        fail "gpus: $(ls "$T/driver2/proc/driver/nvidia/gpus")"
    info=$(cat "$T/driver2/proc/driver/nvidia/gpus/0000:3b:00.0/information")
    assert_line_in $'GPU UUID: \t GPU-0000aaaa-1111-2222-3333-444455556666' "$info" "the A100's information"
    assert_line_in $'Device Minor: \t 3' "$info" "the A100's information"
}

test_fixtures_glibc_image_docker() {
    require_probe_build
    require_docker
    local image out
    image=$(e2e_glibc_image)
    [[ $(e2e_glibc_image) == "$image" ]] || fail "the same content gave another image tag"
    out=$(e2e_docker run --rm --network none "$image" sh -c "$NO_DRIVER_SCRIPT" 2>&1)
    assert_no_driver_view "$out" 1

    image=$(e2e_glibc_image --no-ldconfig)
    out=$(e2e_docker run --rm --network none "$image" sh -c "$NO_DRIVER_SCRIPT" 2>&1)
    assert_no_driver_view "$out" 0
}

test_fixtures_glibc_rootfs_podman() {
    require_probe_build
    require_podman
    local specdir out
    specdir=$(new_spec_dir)
    make_glibc_rootfs "$T/rootfs"
    out=$(e2e_podman "$specdir" run --rm --network none "${E2E_ULIMITS[@]}" --rootfs "$T/rootfs" \
        sh -c "$NO_DRIVER_SCRIPT" 2>&1)
    assert_no_driver_view "$out" 1

    make_glibc_rootfs "$T/rootfs-noldconfig" --no-ldconfig
    out=$(e2e_podman "$specdir" run --rm --network none "${E2E_ULIMITS[@]}" --rootfs "$T/rootfs-noldconfig" \
        sh -c "$NO_DRIVER_SCRIPT" 2>&1)
    assert_no_driver_view "$out" 0
}

test_fixtures_runc_bundle_hook() {
    require_root
    require_busybox
    command -v runc >/dev/null || skip "runc not installed (run tests/e2e/install-deps.sh)"
    command -v jq >/dev/null || skip "jq not installed (run tests/e2e/install-deps.sh)"
    local bundle=$T/bundle out log id=gpuslice-e2e-fixtures-$$
    make_busybox_rootfs "$T/rootfs"
    # shellcheck disable=SC2016 # expanded in the container
    make_runc_bundle "$bundle" "$T/rootfs" -- /bin/sh -c 'echo hi; echo "FOO=$FOO"; cat /mnt/bound; ls -l /dev/nvidia0'
    render_template "$E2E_DIR/fixtures/recording-hook.sh" "$T/hook.sh" LOG="$T/hook.log"
    chmod 755 "$T/hook.sh"
    runc_bundle_add_hook "$bundle" createContainer "$T/hook.sh" create-container --slice slice1
    runc_bundle_add_hook "$bundle" poststop "$T/hook.sh" poststop --slice slice1
    runc_bundle_add_env "$bundle" FOO=first
    runc_bundle_add_env "$bundle" FOO=bar
    printf 'bound\n' >"$T/bound"
    runc_bundle_add_bind "$bundle" "$T/bound" /mnt/bound ro
    runc_bundle_add_device "$bundle" /dev/nvidia0 c 195 0

    out=$(runc_run "$bundle" "$id")
    printf '%s\n' "$out"
    assert_line_in hi "$out" "the bundle's output"
    assert_line_in FOO=bar "$out" "the bundle's environment"
    assert_line_in bound "$out" "the bind mount"
    grep -qE '^crw-rw-rw- .* 195, +0 .*/dev/nvidia0$' <<<"$out" || fail "no /dev/nvidia0 c 195:0 in the container"
    log=$(cat "$T/hook.log")
    printf 'hook: %s\n' "$log"
    assert_line_in "create-container --slice slice1 status=creating" "$log" "hook calls"
    assert_line_in "poststop --slice slice1 status=stopped" "$log" "hook calls"
    ! runc --root "$E2E_RUNC_ROOT" state "$id" >/dev/null 2>&1 || fail "container $id was not deleted"

    # A hook that fails stops the container; runc_run fails and shows why.
    printf '#!/bin/sh\necho "refused: fixture check" >&2\nexit 3\n' >"$T/refuse.sh"
    chmod 755 "$T/refuse.sh"
    runc_bundle_add_hook "$bundle" createContainer "$T/refuse.sh"
    if runc_run "$bundle" "$id" >"$T/out" 2>"$T/err"; then fail "a failing createContainer hook did not stop the container"; fi
    cat "$T/err"
    grep -q 'refused: fixture check' "$T/err" || fail "runc_run did not show the hook's message"
    ! runc --root "$E2E_RUNC_ROOT" state "$id" >/dev/null 2>&1 || fail "container $id was not deleted after a failure"
}

# simulated_gpu_args DRIVER_ROOT STATE: engine arguments giving a container the simulated driver
# by hand (its libraries bind-mounted at their sonames, no hook) and the simulated GPU.
simulated_gpu_args() {
    local root=$1 state=$2 lib ver
    lib=$root/$E2E_DRIVER_LIBDIR
    ver=$(fakegpu_driver_version)
    printf '%s\n' --network none \
        -v "$lib/libcuda.so.$ver:/$E2E_DRIVER_LIBDIR/libcuda.so.1:ro" \
        -v "$lib/libnvidia-ml.so.$ver:/$E2E_DRIVER_LIBDIR/libnvidia-ml.so.1:ro" \
        -v "$root/usr/bin/nvidia-smi:/usr/bin/nvidia-smi:ro"
    fakegpu_run_args "$state"
}

# key_of KEY TEXT: the value of KEY=… in TEXT.
key_of() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

# assert_whole_gpu OUTPUT: cuda-probe meminfo and nvidia-smi saw the whole simulated GPU 0.
assert_whole_gpu() {
    local out=$1
    printf '%s\n' "$out"
    assert_line_in "total=$((80 * GIB))" "$out" "cuMemGetInfo total"
    assert_line_in "device_total=$((80 * GIB))" "$out" "cuDeviceTotalMem"
    assert_line_in "v2_total=$((80 * GIB))" "$out" "NVML through the simulated nvidia-smi"
    assert_line_in "uuid=GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000" "$out" "NVML through the simulated nvidia-smi"
    grep -q '^nvidia-smi: simulated' <<<"$out" || fail "nvidia-smi did not say it is simulated"
}

# assert_sees_holder OUTPUT: nvml-meminfo saw another container's 4 GiB (plus its context).
assert_sees_holder() {
    local out=$1 used
    printf '%s\n' "$out"
    used=$(key_of used "$out")
    ((used >= 4 * GIB && used < 5 * GIB)) || fail "NVML used=$used while another container holds 4 GiB"
}

test_fixtures_simulated_gpu_docker() {
    require_probe_build
    require_docker
    local image args out holder=gpuslice-e2e-holder-$$
    make_driver_root "$T/driver"
    image=$(e2e_glibc_image)
    mapfile -t args < <(simulated_gpu_args "$T/driver" "$T/gpu-state")

    out=$(e2e_docker run --rm "${args[@]}" "$image" sh -c 'cuda-probe meminfo && nvidia-smi')
    assert_whole_gpu "$out"

    # A container holding 4 GiB; another one sharing the state dir sees it, and gets it back
    # when the first is killed.
    defer e2e_docker rm -f "$holder"
    e2e_docker run -d --name "$holder" "${args[@]}" "$image" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 4 --hold-forever >/dev/null
    # shellcheck disable=SC2317 # called by wait_for
    docker_holding() { e2e_docker logs "$holder" 2>&1 | grep -qx holding; }
    wait_for 30 docker_holding ||
        fail "the holder did not say holding: $(e2e_docker logs "$holder" 2>&1)"
    out=$(e2e_docker run --rm "${args[@]}" "$image" cuda-probe nvml-meminfo)
    assert_sees_holder "$out"
    e2e_docker rm -f "$holder" >/dev/null
    out=$(e2e_docker run --rm "${args[@]}" "$image" cuda-probe nvml-meminfo)
    assert_line_in used=0 "$out" "NVML after the holder was killed"
}

test_fixtures_simulated_gpu_podman() {
    require_probe_build
    require_podman
    local specdir args out holder=gpuslice-e2e-holder-$$
    specdir=$(new_spec_dir)
    make_driver_root "$T/driver"
    make_glibc_rootfs "$T/rootfs"
    mapfile -t args < <(simulated_gpu_args "$T/driver" "$T/gpu-state")
    args+=("${E2E_ULIMITS[@]}")

    out=$(e2e_podman "$specdir" run --rm "${args[@]}" --rootfs "$T/rootfs" sh -c 'cuda-probe meminfo && nvidia-smi')
    assert_whole_gpu "$out"

    defer e2e_podman "$specdir" rm -f -t 0 "$holder"
    e2e_podman "$specdir" run -d --name "$holder" "${args[@]}" --rootfs "$T/rootfs" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 4 --hold-forever >/dev/null
    # shellcheck disable=SC2317 # called by wait_for
    podman_holding() { e2e_podman "$specdir" logs "$holder" 2>&1 | grep -qx holding; }
    wait_for 30 podman_holding ||
        fail "the holder did not say holding: $(e2e_podman "$specdir" logs "$holder" 2>&1)"
    out=$(e2e_podman "$specdir" run --rm "${args[@]}" --rootfs "$T/rootfs" cuda-probe nvml-meminfo)
    assert_sees_holder "$out"
    e2e_podman "$specdir" rm -f -t 0 "$holder" >/dev/null
    out=$(e2e_podman "$specdir" run --rm "${args[@]}" --rootfs "$T/rootfs" cuda-probe nvml-meminfo)
    assert_line_in used=0 "$out" "NVML after the holder was killed"
}

HOSTILE_KINDS=(etc preload usr-lib-gpuslice run proc-root cache)

# hostile_link KIND: the path in the rootfs that KIND plants, and what it points at (VICTIM for $V).
hostile_link() {
    case $1 in
        etc) echo "etc \$V" ;;
        preload) echo "etc/ld.so.preload \$V/ld.so.preload" ;;
        usr-lib-gpuslice) echo "usr/lib/gpuslice \$V" ;;
        run) echo "run \$V" ;;
        proc-root) echo "usr/lib/gpuslice /proc/self/root\$V" ;;
        cache) echo "etc/ld.so.cache \$V/ld.so.cache" ;;
    esac
}

# make_victims: one victim dir per kind under $T/victims, with a file, a subdir and a link, and
# its snapshot in $T/victims/KIND.before.
make_victims() {
    local kind v
    for kind in "${HOSTILE_KINDS[@]}"; do
        v=$T/victims/$kind
        mkdir -p "$v/sub"
        printf 'keep\n' >"$v/ld.so.preload"
        printf 'keep\n' >"$v/sub/file"
        ln -s sub/file "$v/link"
        victim_snapshot "$v" >"$T/victims/$kind.before"
    done
}

assert_victim_untouched() {
    local kind=$1 after
    after=$(victim_snapshot "$T/victims/$kind")
    [[ $after == "$(cat "$T/victims/$kind.before")" ]] ||
        fail "victim of $kind changed:"$'\n'"$(diff "$T/victims/$kind.before" <(printf '%s\n' "$after"))"
}

# The hostile images plant their links, and the engines alone (no hook) leave the victims as
# they were: a later change is the hook's doing. podman 4.3 refuses to start the `etc` image
# (it resolves /etc inside the rootfs and finds nothing); Docker creates the missing target
# inside the container.
test_fixtures_hostile_rootfs() {
    require_probe_build
    require_root
    local kind path target v image out
    make_victims
    for kind in "${HOSTILE_KINDS[@]}"; do
        v=$T/victims/$kind
        make_hostile_rootfs "$T/hostile-$kind" "$kind" "$v"
        read -r path target < <(hostile_link "$kind")
        target=${target//\$V/$v}
        [[ -L $T/hostile-$kind/$path && $(readlink "$T/hostile-$kind/$path") == "$target" ]] ||
            fail "$kind: /$path is not a link to $target"
        assert_victim_untouched "$kind"
    done
    [[ -f $T/hostile-preload/etc/ld.so.cache && ! -L $T/hostile-preload/etc/ld.so.cache ]] ||
        fail "the preload image lost its own ld.so.cache"
    if ! victim_snapshot "$T/victims/etc" | grep -q '^sub/file f 644 '; then
        fail "victim_snapshot does not list sub/file: $(victim_snapshot "$T/victims/etc")"
    fi

    if (require_docker) >/dev/null 2>&1; then
        for kind in "${HOSTILE_KINDS[@]}"; do
            image=gpuslice-e2e/hostile-$kind:$$
            docker_image_from_rootfs "$T/hostile-$kind" "$image"
            defer e2e_docker rmi -f "$image"
            out=$(e2e_docker run --rm --network none "$image" /usr/local/bin/cuda-probe info 2>&1 || true)
            printf 'docker %s: %s\n' "$kind" "$out"
            assert_victim_untouched "$kind"
        done
    else
        printf 'docker: not available, not run\n'
    fi
    if (require_podman) >/dev/null 2>&1; then
        local specdir
        specdir=$(new_spec_dir)
        for kind in "${HOSTILE_KINDS[@]}"; do
            out=$(e2e_podman "$specdir" run --rm --network none "${E2E_ULIMITS[@]}" --rootfs "$T/hostile-$kind" \
                /usr/local/bin/cuda-probe info 2>&1 || true)
            printf 'podman %s: %s\n' "$kind" "$out"
            assert_victim_untouched "$kind"
        done
    else
        printf 'podman: not available, not run\n'
    fi
}
