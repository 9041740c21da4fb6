# shellcheck shell=bash
# A hostile tenant: a container on a 40 GiB slice attacks its slice's shared state (the attacks
# of issue "7 · A slice a container cannot cheat" that the hook, the state devices and the
# interception library stop; the host guard's are elsewhere). The node is test_hook.sh's
# (hook_node): two simulated 80 GiB GPUs, slice0 and slice1 on GPU 0, slice2 and slice3 on
# GPU 1. Attacks that need more than a shell use fixtures/tenant.c (OFD locks, board records,
# ftruncate, pwrite), bound into the attacker's container.
#
# After each attack: the slice's limit holds (or the attacker gets a clear error), a new
# container on the slice and on its GPU's other slice works, nothing on the host grew, and
# nothing waited without end (every container run has a time limit).

HOSTILE_SLICE_BYTES=42949672960

# hostile_node: the node, the spec installed, the glibc image in $HOSTILE_IMAGE, the tenant
# tool in $T/tenant. Docker has seen the spec when it returns.
hostile_node() {
    require_hook_flow
    require_docker
    hook_node
    install_docker_spec "$T/cdi/gpuslice.yaml"
    "${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -o "$T/tenant" "$E2E_DIR/fixtures/tenant.c" ||
        fail "building fixtures/tenant.c failed"
    HOSTILE_IMAGE=$(e2e_glibc_image)
    docker_gpu --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" true || fail "a first container failed"
}

# ctr SECONDS ARGS...: `docker run --rm` with the simulated GPU and the tenant tool, killed
# after SECONDS (status 124: it hung). Its stderr goes to $T/docker-stderr and the log.
ctr() {
    local limit=$1 status=0
    shift
    timeout -k 10 "$limit" "$(e2e_docker_bin)" run --rm --network none "${HOOK_FAKE_ARGS[@]}" \
        -v "$T/tenant:/usr/local/bin/tenant:ro" "$@" 2>"$T/docker-stderr" || status=$?
    cat "$T/docker-stderr" >&2
    ((status != 124 && status != 137)) || fail "docker run $* did not end within ${limit}s"
    return "$status"
}

# ctr_detached NAME ARGS...: a container left running (removed when the test ends).
ctr_detached() {
    local name=$1
    shift
    defer e2e_docker rm -f "$name"
    e2e_docker run -d --name "$name" --network none "${HOOK_FAKE_ARGS[@]}" \
        -v "$T/tenant:/usr/local/bin/tenant:ro" "$@" >/dev/null || fail "starting $name failed"
}

# logs_say NAME TEXT: the container's output has TEXT.
logs_say() { e2e_docker logs "$1" 2>&1 | grep -qF "$2"; }

# assert_slices_work SLICE...: a new container on each SLICE sees 40 GiB and gets 1 GiB (on
# the slice's GPU: the simulated driver shows both GPUs in every container, two slices each).
assert_slices_work() {
    local s out gpu
    for s in "$@"; do
        gpu=$((${s#slice} / 2))
        out=$(ctr 120 --device "gpuslice.dev/vgpu=$s" "$HOSTILE_IMAGE" \
            sh -c "cuda-probe --device $gpu meminfo && cuda-probe --device $gpu alloc --path alloc --size 1G") ||
            fail "$s: a new container failed after the attack: $(cat "$T/docker-stderr")"
        assert_line_in "total=$HOSTILE_SLICE_BYTES" "$out" "$s after the attack"
    done
}

# device_used INDEX: device memory in use on GPU INDEX as the simulated driver itself counts it.
device_used() {
    LD_LIBRARY_PATH=$T/driver/$E2E_DRIVER_LIBDIR FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML \
        FAKEGPU_STATE_DIR=$T/fakegpu-state "$(build_cuda_probe)/cuda-probe" nvml-meminfo --index "$1" |
        sed -n 's/^used=//p'
}

# state_size: bytes in the host's state directory, and the sizes of its devices. Not host/:
# the hook's records of the containers running (for the host guard), which containers started
# between two calls add, and which no container can reach.
state_size() {
    local node dev
    du -sb --exclude="$T/state/host" "$T/state" | cut -f1
    while IFS= read -r node; do
        dev=$((16#$(stat -c %t "$node"))):$((16#$(stat -c %T "$node")))
        printf '%s %s\n' "$node" "$(cat "/sys/dev/block/$dev/size")"
    done < <(find "$T/state" -type b | sort)
}

REGION=/run/gpuslice/slices/slice0/region
BOARD=/run/gpuslice/gpus/GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000/board

# `mv /run/gpuslice /run/x`, then allocate: the mount point cannot be renamed, and moving /run
# (which can be) leaves the library finding its slice through mountinfo.
test_hostile_moves_the_state_away() {
    hostile_node
    local out holder=gpuslice-e2e-mover-$$
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sh -c '
        if mv /run/gpuslice /run/x 2>/dev/null; then echo moved_state=yes; else echo moved_state=no; fi
        if mv /run /run2 2>/dev/null; then echo moved_run=yes; else echo moved_run=no; fi
        ls -d /run2/gpuslice/slices/slice0 /run/gpuslice/slices/slice0 2>/dev/null
        cuda-probe meminfo
        cuda-probe alloc --path alloc --size 60G | sed "s/^/big_/"
        true') || fail "the container failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    assert_line_in moved_state=no "$out" "renaming the state's mount point"
    assert_line_in "total=$HOSTILE_SLICE_BYTES" "$out" "the view after the moves"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "60 GiB in a 40 GiB slice after the moves"
    # A process that moved the state away and fills the slice: held at the limit, and counted.
    ctr_detached "$holder" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sh -c \
        'mv /run /run2; exec cuda-probe fill --path alloc --chunk 1G --max-chunks 60 --hold-forever'
    wait_for 60 logs_say "$holder" holding || fail "the filler never held: $(e2e_docker logs "$holder" 2>&1)"
    local used truth
    used=$(slice_field slice0 memory_used_bytes)
    truth=$(device_used 0)
    printf 'status: %s bytes used; the simulated GPU: %s\n' "$used" "$truth"
    ((used >= 39 << 30 && used <= HOSTILE_SLICE_BYTES)) || fail "status shows $used bytes on slice0"
    ((truth <= HOSTILE_SLICE_BYTES)) || fail "the GPU holds $truth bytes for a 40 GiB slice"
    e2e_docker rm -f "$holder" >/dev/null
    wait_for 20 slice_idle slice0 || fail "slice0 not idle after the filler: $("$E2E_GENERATOR" status --state-dir "$T/state")"
    assert_slices_work slice0 slice1
}

# A forged slice on a read-only image and on a `:ro` volume, pointed at with GPUSLICE_STATE_DIR,
# named to sort first, and a symlink swapped to and fro while the library looks: the hook's
# slice is the one that counts.
test_hostile_forges_read_only_limits() {
    hostile_node
    local forged=$T/forged out tag=gpuslice-e2e/forger:$$
    mkdir -p "$forged/slices/aaa" "$forged/writable/aaa"
    sed -e 's/^slice=slice0$/slice=aaa/' -e 's/^memory_bytes=.*/memory_bytes=85899345920/' \
        "$T/state/slices/slice0/limits" >"$forged/slices/aaa/limits"
    grep -q '^memory_bytes=85899345920$' "$forged/slices/aaa/limits" || fail "the forged limits are not 80 GiB"
    cp "$forged/slices/aaa/limits" "$forged/writable/aaa/limits"
    : >"$forged/slices/aaa/region"
    # The image: the forged state where the hook mounts its own, and at /forged.
    make_glibc_rootfs "$T/forger-rootfs"
    mkdir -p "$T/forger-rootfs/run/gpuslice" "$T/forger-rootfs/forged"
    cp -a "$forged/slices" "$T/forger-rootfs/run/gpuslice/"
    cp -a "$forged/slices" "$T/forger-rootfs/forged/"
    docker_image_from_rootfs "$T/forger-rootfs" "$tag"
    defer e2e_docker rmi -f "$tag"
    out=$(ctr 120 --read-only --device gpuslice.dev/vgpu=slice0 -e GPUSLICE_STATE_DIR=/forged "$tag" sh -c \
        'cuda-probe meminfo; cuda-probe alloc --path alloc --size 41G | sed "s/^/big_/"; true') ||
        fail "the read-only forger failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    assert_line_in "total=$HOSTILE_SLICE_BYTES" "$out" "a --read-only image with forged limits"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB with forged read-only limits"
    # A :ro volume whose slice directory is a symlink that flips between the read-only forged
    # directory and a writable one while the probe discovers its slices.
    # shellcheck disable=SC2016
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 -v "$forged:/vol:ro" -e GPUSLICE_STATE_DIR=/tmp/st \
        "$HOSTILE_IMAGE" sh -c '
        mkdir -p /tmp/st/slices /tmp/w && cp -a /vol/writable/aaa /tmp/w/
        ( while :; do ln -sfn /vol/slices/aaa /tmp/st/slices/aaa; ln -sfn /tmp/w/aaa /tmp/st/slices/aaa; done ) &
        for i in 1 2 3; do cuda-probe meminfo | sed "s/^/r${i}_/"; done
        ln -sfn /vol/slices/aaa /tmp/st/slices/aaa; cuda-probe meminfo | sed "s/^/ro_/"
        GPUSLICE_STATE_DIR=/vol cuda-probe alloc --path alloc --size 41G | sed "s/^/big_/"
        kill $!; true') || fail "the volume forger failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    local r
    for r in r1 r2 r3 ro; do assert_line_in "${r}_total=$HOSTILE_SLICE_BYTES" "$out" "$r: a swapped symlink to forged limits"; done
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "41 GiB with a forged :ro volume"
    assert_slices_work slice0 slice1
}

# A process on the slice that keeps the region's lock: new containers of the slice are refused
# at start with one line, an allocation in a running one fails after its deadline, `docker rm`
# (poststop) does not wait; another slice is untouched; all is well once it is gone.
test_hostile_holds_the_region_lock() {
    hostile_node
    local squatter=gpuslice-e2e-locker-$$ victim=gpuslice-e2e-victim-$$ out start
    ctr_detached "$victim" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sleep 600
    ctr_detached "$squatter" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" tenant lock "$REGION" 0
    wait_for 30 logs_say "$squatter" "holding 1 of 1" || fail "the squatter never held the lock: $(e2e_docker logs "$squatter" 2>&1)"
    start=$SECONDS
    ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" true && fail "a container started while the region lock was held"
    grep -q 'gpuslice-hook: slice0: recording container .*its lock stayed held by another process' "$T/docker-stderr" ||
        fail "the refusal does not say why: $(cat "$T/docker-stderr")"
    printf 'start refused after %ds\n' "$((SECONDS - start))"
    out=$(timeout -k 10 60 "$(e2e_docker_bin)" exec "$victim" cuda-probe alloc --path alloc --size 1G 2>&1) &&
        fail "an allocation succeeded while the region lock was held: $out"
    printf '%s\n' "$out"
    grep -q '^gpuslice: .*its lock stayed held by another process' <<<"$out" || fail "no line from the library: $out"
    grep -q 'CUDA_ERROR_NOT_PERMITTED' <<<"$out" || fail "not refused as NOT_PERMITTED: $out"
    start=$SECONDS
    timeout -k 10 60 "$(e2e_docker_bin)" rm -f "$victim" >/dev/null || fail "docker rm of a slice-mate hung or failed"
    printf 'docker rm took %ds\n' "$((SECONDS - start))"
    assert_slices_work slice1
    e2e_docker rm -f "$squatter" >/dev/null
    assert_slices_work slice0
    # The victim's processes' memory is free again (its container record, left by the poststop
    # that could not have the lock, stays in the informational table until it is reused).
    # shellcheck disable=SC2317
    slice_free() { [[ $(slice_field slice0 memory_used_bytes) == 0 ]]; }
    wait_for 20 slice_free || fail "slice0 still holds memory: $("$E2E_GENERATOR" status --state-dir "$T/state")"
}

# One process locks every slot's lock byte: processes already on the slice keep their memory,
# new ones get one clear line, other slices are untouched, nothing hangs; all is well once it
# is gone. (The squatter is the host guard's to kill: docs/region.md.)
test_hostile_squats_every_slot() {
    hostile_node
    local squatter=gpuslice-e2e-squatter-$$ holder=gpuslice-e2e-holder-$$ out
    ctr_detached "$holder" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 10 --hold-forever
    wait_for 60 logs_say "$holder" holding || fail "the holder never held: $(e2e_docker logs "$holder" 2>&1)"
    ctr_detached "$squatter" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" tenant lock "$REGION" 4096 1024 64
    # Every byte but the holder's own slot's.
    wait_for 30 logs_say "$squatter" "holding 1023 of 1024" || fail "the squatter: $(e2e_docker logs "$squatter" 2>&1)"
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" cuda-probe meminfo 2>&1) &&
        fail "a new process joined a slice whose every slot is squatted: $out"
    grep -q '^gpuslice: .*all 1024 process slots are taken' "$T/docker-stderr" ||
        fail "no clear line: $(cat "$T/docker-stderr")"
    (($(slice_field slice0 memory_used_bytes) >= 10 << 30)) || fail "the holder's memory is no longer counted"
    [[ $(e2e_docker inspect -f '{{.State.Running}}' "$holder") == true ]] || fail "the holder died"
    assert_slices_work slice1
    e2e_docker rm -f "$squatter" >/dev/null
    assert_slices_work slice0
}

# `truncate` and `ftruncate` of the region from inside: impossible, so a slice-mate holding
# memory keeps running (on a plain file it died of SIGBUS) and later starts are not refused.
test_hostile_truncates_the_region() {
    hostile_node
    local mate=gpuslice-e2e-mate-$$ out before
    before=$(state_size)
    ctr_detached "$mate" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 10 --hold-forever
    wait_for 60 logs_say "$mate" holding || fail "the mate never held: $(e2e_docker logs "$mate" 2>&1)"
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sh -c "
        if truncate -s 0 $REGION 2>/dev/null; then echo truncate=yes; else echo truncate=no; fi
        tenant resize $REGION 0
        tenant resize $BOARD 0") || fail "the attacker's container failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    assert_line_in truncate=no "$out" "truncate(1) of the region"
    assert_line_in "resize: Invalid argument" "$out" "ftruncate of the region"
    # The mate is alive, touches its memory's bookkeeping, and frees at exit.
    [[ $(e2e_docker inspect -f '{{.State.Running}}' "$mate") == true ]] || fail "the slice-mate died: $(e2e_docker inspect -f '{{.State.ExitCode}} {{.State.Error}}' "$mate")"
    (($(slice_field slice0 memory_used_bytes) >= 10 << 30)) || fail "the mate's memory is no longer counted"
    [[ $(state_size) == "$before" ]] || fail "the state on the host changed: $before → $(state_size)"
    assert_slices_work slice0 slice1
}

# Growing the region or the board from a container with 256 MiB of memory (it wrote 1 GiB to
# the host's /run): a write past a device's end fails at once, nothing on the host grows.
test_hostile_grows_the_region_and_the_board() {
    hostile_node
    local out before
    before=$(state_size)
    out=$(ctr 120 --memory 256m --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sh -c "
        for f in $REGION $BOARD; do
            if dd if=/dev/zero of=\$f bs=1M seek=1 count=1024 conv=notrunc 2>/dev/null; then echo grew=yes; else echo grew=no; fi
            tenant resize \$f 1073741824
            tenant write-at \$f 1048576 4096
        done") || fail "the attacker's container failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    ! grep -q 'grew=yes\|: ok$' <<<"$out" || fail "something grew: $out"
    [[ $(grep -c 'resize: Invalid argument' <<<"$out") == 2 ]] || fail "ftruncate up was not refused: $out"
    [[ $(grep -c 'write-at: No space left on device' <<<"$out") == 2 ]] || fail "a write past the end was not refused: $out"
    [[ $(state_size) == "$before" ]] || fail "the state on the host grew: $before → $(state_size)"
    assert_slices_work slice0 slice1
}

# A board written past its end and over every record: no container of the GPU is refused, and
# generate rebuilds the board from the config.
test_hostile_writes_over_the_board() {
    hostile_node
    local out
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice1 "$HOSTILE_IMAGE" sh -c "
        tenant write-at $BOARD 8192 4096
        tenant fill-board $BOARD") || fail "the attacker's container failed: $(cat "$T/docker-stderr")"
    printf '%s\n' "$out"
    assert_line_in "write-at: No space left on device" "$out" "a write past the board's end"
    grep -q '^fill-board: ok ([0-9]* records)' <<<"$out" || fail "the board was not filled: $out"
    assert_slices_work slice0 slice1 slice2
    out=$(FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" 2>&1) || fail "generate failed over a scribbled board: $out"
    printf '%s\n' "$out"
    grep -q 'GPU-6a3f1d2e-0000-4e2a-9c1b-000000000000: dropped [0-9]* board records of no configured slice' <<<"$out" ||
        fail "generate did not rebuild the board: $out"
    assert_slices_work slice0 slice1
}

# A fake high-priority record that claims to be busy for the next hour, left by a container
# that then exits: the other slice of the GPU gets its own share, before and after generate
# (it was held at 5 %).
test_hostile_forges_a_busy_high_priority_record() {
    hostile_node
    local out work=(cuda-probe work --path kernel --kernel-ns 1000000 --seconds 2 --sync-every 16)
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice1 "$HOSTILE_IMAGE" tenant forge-record "$BOARD" fake 3600) ||
        fail "the forger failed: $(cat "$T/docker-stderr")"
    assert_line_in "forge-record: ok" "$out" "forging the record"
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" "${work[@]}") || fail "the kernel loop failed"
    printf '%s\n' "$out"
    awk -v s="$(work_share "$out")" 'BEGIN { exit !(s != "" && s >= 30) }' ||
        fail "slice0 got $(work_share "$out") % of the GPU next to a forged busy high-priority record (its share is 50 %)"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "generate failed"
    out=$(ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" "${work[@]}") || fail "the kernel loop failed"
    printf '%s\n' "$out"
    awk -v s="$(work_share "$out")" 'BEGIN { exit !(s != "" && s >= 30) }' ||
        fail "slice0 got $(work_share "$out") % after generate"
}

# split_count = 64, the documented maximum: generate makes every slice of a GPU, and the last
# one runs (its board had room for 63).
test_sixty_four_slices_on_one_gpu_run() {
    require_hook_flow
    require_docker
    hook_node
    sed -i 's/^split_count = 2$/split_count = 64/' "$T/gpuslice.toml"
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" || fail "generate with split_count = 64 failed"
    install_docker_spec "$T/cdi/gpuslice.yaml"
    local image out
    image=$(e2e_glibc_image)
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice63 "$image" sh -c \
        'cuda-probe meminfo; cuda-probe alloc --path alloc --size 2G | sed "s/^/big_/"; true') ||
        fail "a container on slice63 failed"
    printf '%s\n' "$out"
    assert_line_in "total=$((80 * 1024 / 64 << 20))" "$out" "slice63's view (1.25 GiB)"
    assert_line_in "big_error_name=CUDA_ERROR_OUT_OF_MEMORY" "$out" "2 GiB in a 1.25 GiB slice"
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice64 "$image" cuda-probe --device 1 meminfo) ||
        fail "a container on slice64 failed"
    assert_line_in "total=$((80 * 1024 / 64 << 20))" "$out" "slice64's view (GPU 1)"
}
