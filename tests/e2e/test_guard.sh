# shellcheck shell=bash
# The host guard (gpuslice-cdi daemon) through Docker on the simulated GPU: attacks from inside
# a container that get around the interception library, and what the guard does about them.
# The node is test_hook.sh's (two 80 GiB GPUs, 40 GiB slices, slice0/slice1 on GPU 0); the
# guard runs on the host with the simulated driver as its NVML, so the numbers it acts on are
# the simulated driver's own, by host PID. After each attack the slice's true usage (the
# simulated driver's numbers, read by a second, observing guard) is back within its limit, or
# the attacker is gone with one line naming it; a slice-mate and a neighbour slice keep
# running. The attack programs are tests/e2e/attacks/*.c.
# Functions defined here are called indirectly (wait_for, defer):
# shellcheck disable=SC2317

GUARD_ATTACKS_SRC=$E2E_DIR/attacks
GIB=$((1 << 30))

require_guard_flow() {
    require_hook_flow
    command -v jq >/dev/null || skip "no jq (tests/e2e/install-deps.sh installs it)"
}

# guard_node [GUARD_LINES]: test_hook.sh's node, with a [guard] table (GUARD_LINES after
# `[guard]`) in $T/gpuslice.toml, and $T/observer.toml: the same node, every policy `log` and
# compute off, for a second guard that only looks (observe_slice).
guard_node() {
    hook_node
    cp "$T/gpuslice.toml" "$T/observer.toml"
    printf '\n[guard]\n%s\n' "${1:-}" >>"$T/gpuslice.toml"
    printf '\n[guard]\nmemory_policy = "log"\nunsliced_policy = "log"\n' >>"$T/observer.toml"
    install_docker_spec "$T/cdi/gpuslice.yaml"
}

# guard_env CMD...: CMD with the simulated GPU as the host's NVML.
guard_env() {
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML FAKEGPU_STATE_DIR=$T/fakegpu-state "$@"
}

# start_guard: the guard in the background, logging to $T/guard.log; stopped when the test ends.
# Started as a plain command, so that $! is the daemon itself (a function run with & would be a
# subshell, and SIGTERM would leave the daemon running), without the run's lock (fd 9), which it
# would otherwise hold for its whole life.
start_guard() {
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML FAKEGPU_STATE_DIR=$T/fakegpu-state "$E2E_GENERATOR" daemon \
        --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB" >/dev/null 2>"$T/guard.log" 9>&- &
    GUARD_PID=$!
    defer stop_guard
    wait_for 10 grep -q 'guard started' "$T/guard.log" || fail "the guard did not start: $(cat "$T/guard.log")"
}

stop_guard() {
    kill -TERM "$GUARD_PID" 2>/dev/null && wait "$GUARD_PID" 2>/dev/null
    ! kill -0 "$GUARD_PID" 2>/dev/null || { e2e_log "the guard outlived SIGTERM"; kill -KILL "$GUARD_PID"; }
    printf -- '--- the guard'"'"'s log\n' >&2
    cat "$T/guard.log" >&2
}

# observe_slice SLICE FIELD: FIELD of SLICE in one pass of an observing guard (the simulated
# driver's numbers): used_bytes, sm_percent, processes, …
observe_slice() {
    guard_env "$E2E_GENERATOR" daemon --config "$T/observer.toml" --nvml-lib "$E2E_FAKEGPU_LIB" \
        --passes 1 --json 2>/dev/null |
        jq -r --arg s "$1" ".snapshot.slices[] | select(.name == \$s) | .$2"
}

# guard_image: the glibc image with the attack programs in /usr/local/bin, once per content.
guard_image() {
    local dir tag
    dir=$(mktemp -d "$T/guard-image.XXXXXX")
    make_glibc_rootfs "$dir/rootfs"
    bash "$GUARD_ATTACKS_SRC/build.sh" "$dir/rootfs/usr/local/bin" >&2 || fail "building the attack programs failed"
    tag=gpuslice-e2e/guard:$(rootfs_content_hash "$dir/rootfs")
    if ! e2e_docker image inspect "$tag" >/dev/null 2>&1; then
        docker_image_from_rootfs "$dir/rootfs" "$tag"
    fi
    rm -rf "$dir"
    printf '%s\n' "$tag"
}

# run_detached NAME ARGS...: `docker run -d --name NAME` with the simulated GPU; removed when
# the test ends.
run_detached() {
    local name=$1 deadline=$((SECONDS + 10)) err
    shift
    defer e2e_docker rm -f "$name"
    while :; do
        if e2e_docker run -d --name "$name" --network none "${HOOK_FAKE_ARGS[@]}" "$@" >/dev/null 2>"$T/run.err"; then
            return 0
        fi
        err=$(cat "$T/run.err")
        e2e_docker rm -f "$name" >/dev/null 2>&1 || true
        if [[ $err == *'unresolvable CDI devices'* ]] && ((SECONDS < deadline)); then
            sleep 0.2
            continue
        fi
        fail "docker run $name failed: $err"
    done
}

holding() { e2e_docker logs "$1" 2>&1 | grep -qx holding; }
running() { [[ $(e2e_docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }
stopped() { ! running "$1"; }
held_or_stopped() { holding "$1" || stopped "$1"; }
said() { e2e_docker logs "$1" 2>&1 | grep -qx "$2"; }
short_id() { e2e_docker inspect -f '{{.Id}}' "$1" | cut -c1-12; }

# guard_line PATTERN: the first line of the guard's log matching PATTERN (grep -E).
guard_line() { grep -E -m1 -- "$1" "$T/guard.log"; }

# line_ns LINE: the guard log line's timestamp (RFC 3339, UTC) in ns since the epoch.
line_ns() { date -d "${1%% *}" +%s%N; }

# hold_mates: a slice-mate on slice0 (10 GiB through the interception library) and a neighbour
# on slice1 (20 GiB), both holding.
hold_mates() {
    local image=$1
    run_detached gpuslice-e2e-mate-$$ --device gpuslice.dev/vgpu=slice0 "$image" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 10 --hold-forever
    run_detached gpuslice-e2e-neighbour-$$ --device gpuslice.dev/vgpu=slice1 "$image" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 20 --hold-forever
    wait_for 30 holding gpuslice-e2e-mate-$$ || fail "the slice-mate did not hold: $(e2e_docker logs gpuslice-e2e-mate-$$ 2>&1)"
    wait_for 30 holding gpuslice-e2e-neighbour-$$ || fail "the neighbour did not hold"
}

assert_mates_running() {
    running gpuslice-e2e-mate-$$ || fail "$1: the slice-mate stopped: $(e2e_docker logs gpuslice-e2e-mate-$$ 2>&1 | tail -n 3)"
    running gpuslice-e2e-neighbour-$$ || fail "$1: the neighbour slice's container stopped"
}

# assert_slice_within SLICE WHAT: the simulated driver counts at most the limit (plus the
# tolerance of its processes) for SLICE.
assert_slice_within() {
    local used
    used=$(observe_slice "$1" used_bytes)
    [[ -n $used ]] || fail "$2: no observation of $1"
    ((used <= HOOK_SLICE_BYTES + GIB)) || fail "$2: $1 holds $used bytes by the driver's count, limit $HOOK_SLICE_BYTES"
    printf '%s: %s holds %s bytes by the driver'"'"'s count\n' "$2" "$1" "$used"
}

# One container per attack on slice0 tries to hold 35 GiB next to the slice-mate's 10: more than
# the 40 GiB slice. The interception library would refuse at about 29 GiB; each of these gets
# around it. Within two guard intervals of going over, the guard kills it.
test_docker_guard_kills_what_gets_around_the_interception_library() {
    require_guard_flow
    require_docker
    guard_node 'interval = "1s"'
    local image attack name out id line over caught verdict
    image=$(guard_image)
    hold_mates "$image"
    start_guard
    : >"$T/catch-times"
    for attack in dlvsym dlmopen private-copy elf-lookup own-loader; do
        name=gpuslice-e2e-attack-$attack-$$
        run_detached "$name" --device gpuslice.dev/vgpu=slice0 "$image" "$attack" 35
        id=$(short_id "$name")
        # It holds (the guard then kills it), or it stops: refused (the library caught it) or killed.
        wait_for 30 held_or_stopped "$name" ||
            fail "$attack: neither held nor stopped: $(e2e_docker logs "$name" 2>&1)"
        if ! wait_for 5 guard_line "container $id.*killed"; then
            out=$(e2e_docker logs "$name" 2>&1)
            if running "$name"; then
                fail "$attack: holds past its limit and the guard did nothing within 5 s:"$'\n'"$out"
            fi
            verdict="stopped before it went over (the interception library refused it)"
            printf '%s\n' "$out"
        else
            line=$(guard_line "container $id.*killed")
            over=$(e2e_docker logs "$name" 2>&1 | sed -n 's/^held=[0-9]* at_ns=//p' | tail -n 1)
            caught=$((($(line_ns "$line") - over) / 1000000))
            verdict="killed by the guard ${caught} ms after its last allocation"
            [[ $line == *"slice0 is over its memory limit by the driver's count"* ]] || fail "$attack: $line"
            wait_for 5 stopped "$name" || fail "$attack: still running"
            ((caught <= 2000 + 500)) || fail "$attack: caught after $caught ms, more than two intervals"
        fi
        printf 'attack %s: %s\n' "$attack" "$verdict" | tee -a "$T/catch-times"
        assert_mates_running "$attack"
        assert_slice_within slice0 "$attack"
    done
    cat "$T/catch-times" >&2
}

# Zeros over the region's usage counters (everything after its header, to the end of its zram
# device), between two holders of
# one container (`plain`: through the interception library): the library then believes the
# slice is empty and lets the second take 20 GiB more. The guard kills the one that grew last.
test_docker_guard_kills_after_usage_counters_are_zeroed() {
    require_guard_flow
    require_docker
    guard_node 'interval = "1s"'
    local image name=gpuslice-e2e-zeroer-$$ id line over caught
    image=$(guard_image)
    hold_mates "$image"
    start_guard
    # shellcheck disable=SC2016 # expanded in the container
    run_detached "$name" --device gpuslice.dev/vgpu=slice0 "$image" sh -c '
        region=/run/gpuslice/slices/slice0/region
        plain 20 >/tmp/first 2>&1 &
        until grep -qx holding /tmp/first; do sleep 0.1; done
        # A block device: dd writes zeros until the device ends (and then fails: ignored).
        dd if=/dev/zero of="$region" bs=512 seek=1 conv=notrunc 2>/dev/null
        echo zeroed
        exec plain 20'
    id=$(short_id "$name")
    wait_for 30 said "$name" zeroed || fail "the region was not zeroed: $(e2e_docker logs "$name" 2>&1)"
    if wait_for 10 guard_line "container $id.*killed"; then
        line=$(guard_line "container $id.*killed")
        over=$(e2e_docker logs "$name" 2>&1 | sed -n 's/^held=[0-9]* at_ns=//p' | tail -n 1)
        caught=$((($(line_ns "$line") - over) / 1000000))
        printf 'zeroed counters: killed by the guard %s ms after the last allocation\n' "$caught"
    else
        # The library may notice the damage and refuse: then nothing is over.
        e2e_docker logs "$name" 2>&1 | tail -n 5
        printf 'zeroed counters: the second holder did not get past the limit\n'
    fi
    assert_mates_running "zeroed counters"
    assert_slice_within slice0 "zeroed counters"
}

# The pacing clock forged from inside the container (the clock at 0 and busy_until a minute
# ahead, every millisecond): the library stops pacing and the kernel loop takes the whole idle GPU
# on a 50 % `cap` slice. With compute_guard = "throttle" the guard freezes and thaws the
# container until the slice is back near its share; then a neighbour slice's kernel loop on the
# same GPU gets its share.
test_docker_guard_throttles_a_forged_pacing_clock() {
    require_guard_flow
    require_docker
    guard_node $'interval = "1s"\ncompute_guard = "throttle"\ncompute_window = "3s"'
    local image name=gpuslice-e2e-pacer-$$ line started throttled before share samples=() s out
    image=$(guard_image)
    start_guard
    # forge-clock (tests/e2e/attacks/forge_clock.c) resets the clock every millisecond.
    run_detached "$name" --device gpuslice.dev/vgpu=slice0 "$image" sh -c '
        forge-clock /run/gpuslice/slices/slice0/region &
        exec cuda-probe work --path kernel --kernel-ns 1000000 --seconds 40 --sync-every 16'
    started=$(date +%s%N)
    sleep 2
    before=$(observe_slice slice0 sm_percent)
    printf 'forged pacing clock: slice0 at %s %% of the GPU before the guard acts (share 50 %%)\n' "$before"
    wait_for 15 guard_line "slice0 took .* throttled" || fail "slice0 was not throttled"
    line=$(guard_line "slice0 took .* throttled")
    throttled=$((($(line_ns "$line") - started) / 1000000))
    printf 'forged pacing clock: throttled %s ms after the container started (window 3 s)\n' "$throttled"
    # Give the duty cycle a few intervals to settle, then sample the slice's share.
    sleep 4
    for _ in 1 2 3 4 5; do
        s=$(observe_slice slice0 sm_percent)
        samples+=("$s")
        sleep 1
    done
    share=$(printf '%s\n' "${samples[@]}" | awk '{ t += $1 } END { printf "%d", t / NR }')
    printf 'forged pacing clock: slice0 at %s %% of the GPU under throttle (samples %s; share 50 %%)\n' "$share" "${samples[*]}"
    ((share <= 70)) || fail "slice0 still takes $share % of the GPU under throttle"
    # The neighbour slice on the same GPU gets about its share next to the throttled one.
    out=$(docker_gpu --device gpuslice.dev/vgpu=slice1 "$image" \
        cuda-probe work --path kernel --kernel-ns 1000000 --seconds 3 --sync-every 16) || fail "the neighbour's loop failed"
    s=$(work_share "$out")
    printf 'forged pacing clock: the neighbour slice1 got %s %% next to it (share 50 %%)\n' "$s"
    awk -v s="$s" 'BEGIN { exit !(s != "" && s >= 30) }' || fail "the neighbour got ${s:-no} % of the GPU"
    running "$name" || fail "the throttled container stopped"
}

# A container started without a gpuslice device, with the driver mounted by hand, on a GPU that
# has slices: the guard reports it once; with unsliced_policy = "kill" it kills it.
test_docker_guard_reports_a_container_without_a_slice() {
    require_guard_flow
    require_docker
    guard_node 'unsliced_policy = "kill"'
    local image name=gpuslice-e2e-stray-$$ args
    image=$(guard_image)
    mapfile -t args < <(simulated_gpu_args "$T/driver" "$T/fakegpu-state")
    start_guard
    defer e2e_docker rm -f "$name"
    e2e_docker run -d --name "$name" "${args[@]}" "$image" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 2 --hold-forever >/dev/null
    wait_for 10 guard_line "outside every slice.*killed" || fail "the stray container was not killed"
    guard_line "outside every slice" | grep -q 'not in a container started with a gpuslice device' ||
        fail "$(guard_line "outside every slice")"
    wait_for 5 stopped "$name" || fail "still running"
    (($(grep -c 'outside every slice' "$T/guard.log") == 1)) || fail "reported more than once"
}

# A container keeps slice0's region lock (`tenant lock REGION 0`, as in
# test_hostile_holds_the_region_lock): without the guard every slice-mate's allocation fails
# after its wait and every new container of slice0 is refused for as long as it holds it. The
# guard finds the holder from the kernel's lock list and kills it within lock_hold_limit + two
# intervals, with one line; then a slice-mate allocates and a new container on slice0 starts.
test_docker_guard_kills_a_region_lock_squatter() {
    require_guard_flow
    require_docker
    guard_node $'interval = "1s"\nlock_hold_limit = "3s"'
    "${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -o "$T/tenant" "$E2E_DIR/fixtures/tenant.c" ||
        fail "building fixtures/tenant.c failed"
    HOSTILE_IMAGE=$(e2e_glibc_image)
    local squatter=gpuslice-e2e-lock-squatter-$$ mate=gpuslice-e2e-lock-mate-$$ id line held_ns caught out
    ctr_detached "$mate" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" sleep 600
    start_guard
    ctr_detached "$squatter" --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" tenant lock "$REGION" 0
    wait_for 30 logs_say "$squatter" "holding 1 of 1" || fail "the squatter never held the lock: $(e2e_docker logs "$squatter" 2>&1)"
    held_ns=$(date +%s%N)
    id=$(short_id "$squatter")
    wait_for 15 guard_line "region lock.*killed" || fail "the squatter was not killed"
    line=$(guard_line "region lock.*killed")
    printf '%s\n' "$line"
    [[ $line == *"slice0: pid "*" of container $id"*"held the slice's region lock for "* ]] || fail "the line: $line"
    (($(grep -c 'region lock' "$T/guard.log") == 1)) || fail "more than one line: $(grep 'region lock' "$T/guard.log")"
    caught=$((($(line_ns "$line") - held_ns) / 1000000))
    printf 'squatter killed %d ms after it held the lock\n' "$caught"
    ((caught <= 3000 + 2000 + 500)) || fail "killed after $caught ms, more than lock_hold_limit + two intervals"
    wait_for 5 stopped "$squatter" || fail "the squatter still runs"
    out=$(timeout -k 10 60 "$(e2e_docker_bin)" exec "$mate" cuda-probe alloc --path alloc --size 1G 2>&1) ||
        fail "the slice-mate could not allocate after the kill: $out"
    printf '%s\n' "$out"
    ctr 120 --device gpuslice.dev/vgpu=slice0 "$HOSTILE_IMAGE" cuda-probe alloc --path alloc --size 1G ||
        fail "a new container on slice0 failed after the kill: $(cat "$T/docker-stderr")"
}
