#!/usr/bin/env bash
# Container start-up cost of a gpuslice device, against a baseline measured in the same run.
#
#   tests/bench/startup.sh          as root, after `make release` (`make bench` runs it)
#
# The node is the end-to-end tier's simulated one (tests/e2e: device nodes, driver root, the
# spec with the static gpuslice-hook, a glibc image). Three figures:
#
# 1. `docker run --rm --network none <image> true`, interleaved in rounds over the arms: no
#    device; a CDI device whose hooks are /bin/true (same device nodes and environment, so this
#    arm is the engine's own CDI cost); gpuslice.dev/vgpu=slice0 with the real hook; and, where
#    Docker has the runtime "gpuslice" (tests/e2e/install-deps.sh registers it), the path for
#    engines without CDI: `--runtime gpuslice` asking for nothing (gpuslice-runtime's own cost
#    in front of runc) and `--runtime gpuslice -e GPUSLICE_SLICES=slice0` (the bundle edited,
#    then the same hook). Every arm gets the simulated GPU's bind mounts and variables, so only
#    the device differs. Ratios are the median of the rounds' ratios against "no device";
#    target ≤ 1.15×.
# 2. The hook on its own, run the way runc runs it: create-container in a private mount
#    namespace (`unshare --mount`) on a fresh overlay of the image's rootfs, with the OCI state
#    on standard input and the spec's arguments; poststop on the host. Each against the same
#    launch of /bin/true, interleaved; target ≤ 10 ms added for create-container.
# 3. Where tracefs can be had (it is mounted for the run if it is not): each hook process of (1)
#    and (2) from exec to exit, from the kernel's sched events (nothing added to the hook), and
#    how many hook processes each container ran.
#
# STARTUP_ROUNDS (30) Docker rounds, STARTUP_HOOK_ROUNDS (100) rounds of (2),
# STARTUP_FAKEGPU=0 leaves the simulated GPU's mounts and variables out of every arm.
# Prints `skipped: <why>` and exits 0 where it cannot run (not root, no Docker with CDI, …).
# The jq filters name jq's variables ($stage, $root, …) in single quotes, on purpose:
# shellcheck disable=SC2016
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$BENCH_DIR/../e2e/lib.sh"
# require_generator, then hook_node, require_hook_flow, docker_gpu.
# shellcheck source=tests/e2e/test_cdi_generated.sh
. "$E2E_DIR/test_cdi_generated.sh"
# shellcheck source=tests/e2e/test_hook.sh
. "$E2E_DIR/test_hook.sh"
# point_runtime_wrapper, for the gpuslice-runtime arms.
# shellcheck source=tests/e2e/test_runtime.sh
. "$E2E_DIR/test_runtime.sh"

ROUNDS=${STARTUP_ROUNDS:-30}
HOOK_ROUNDS=${STARTUP_HOOK_ROUNDS:-100}
FAKEGPU=${STARTUP_FAKEGPU:-1}
WARMUP=3
RATIO_TARGET=1.15
HOOK_TARGET_MS=10
# The issue's figure for NVIDIA's CDI path (nvidia-ctk's spec hooks).
NVIDIA_HOOKS=5
NOHOOK_KIND=gpuslice.dev/vgpu-nohook
TRACEFS=/sys/kernel/tracing

# The e2e helpers report through skip and fail; here a skip ends the benchmark quietly.
skip() {
    printf 'bench container start-up: skipped: %s\n' "$*"
    exit 0
}
fail() {
    printf 'bench container start-up: FAILED: %s\n' "$*" >&2
    exit 1
}
note() { printf '[bench] %s\n' "$*" >&2; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ && $HOOK_ROUNDS =~ ^[1-9][0-9]*$ ]] ||
    fail "STARTUP_ROUNDS and STARTUP_HOOK_ROUNDS must be positive integers"

require_hook_flow
require_docker
command -v jq >/dev/null || skip "no jq (tests/e2e/install-deps.sh installs it)"
command -v unshare >/dev/null || skip "no unshare (util-linux)"

# One run at a time with the e2e tier: they share Docker's spec directory.
mkdir -p "$E2E_RUN_DIR"
exec 9>"$E2E_RUN_DIR/lock"
flock -w 600 9 || fail "another run holds $E2E_RUN_DIR/lock"
# The directory is the tests' own (see run.sh): a killed run's specs would conflict with ours.
clear_docker_specs() { rm -f "$E2E_DOCKER_CDI_DIR"/*.yaml "$E2E_DOCKER_CDI_DIR"/*.json; }
clear_docker_specs

T=$(mktemp -d "${TMPDIR:-/tmp}/gpuslice-bench.XXXXXX")
export T
E2E_TEST_NAME=bench-startup
E2E_SKIP_FILE=$T/skip-reason
defer rm -rf "$T"
trap e2e_run_deferred EXIT

# ---------------------------------------------------------------------------------------------
# Statistics (times in ms, one a line)

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; printf "%.3f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# paired OP A B: OP (ratio or diff) of each pair of lines of files A and B.
paired() { paste "$2" "$3" | awk -v op="$1" '{ printf "%.6f\n", op == "ratio" ? $2 / $1 : $2 - $1 }'; }
# spread FILE: the middle half of the values, "p25-p75".
spread() { sort -g "$1" | awk '{ v[NR] = $1 } END { printf "%.0f-%.0f", v[int((NR + 3) / 4)], v[int((3 * NR + 3) / 4)] }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
verdict() { if le "$1" "$2"; then echo met; else echo MISSED; fi; }
ms_or_dash() { if [[ -n $1 ]]; then printf '%.2f ms' "$1"; else printf -- -; fi; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }'; }

# ---------------------------------------------------------------------------------------------
# The node: the e2e tier's, plus a second spec whose hooks are /bin/true

# Other work on the machine moves every figure here; the load average is printed with them.
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
note "setting up the simulated node and the glibc image"
hook_node >/dev/null
((FAKEGPU)) || HOOK_FAKE_ARGS=()
install_docker_spec "$T/cdi/gpuslice.yaml"
IMAGE=$(e2e_glibc_image)

mkdir -p "$T/cdi-nohook" "$T/state-nohook"
defer remove_state_devices "$T/state-nohook"
render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/nohook.toml" \
    SPEC_DIR="$T/cdi-nohook" STATE_DIR="$T/state-nohook" HOOK_PATH=/bin/true SHIM_PATH="$E2E_SHIM" \
    DRIVER_ROOT="$T/driver" ANNOTATIONS=true
sed -i "s|^kind = .*|kind = \"$NOHOOK_KIND\"|" "$T/nohook.toml"
FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/nohook.toml" \
    --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state-nohook" \
    --output "$T/cdi-nohook/gpuslice-nohook.yaml" 2>"$T/generate.log" ||
    fail "gpuslice-cdi generate (hooks /bin/true) failed: $(cat "$T/generate.log")"
install_docker_spec "$T/cdi-nohook/gpuslice-nohook.yaml"

# The hook's path and arguments as the spec gives them, from its JSON form.
FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML "$E2E_GENERATOR" generate --config "$T/gpuslice.toml" \
    --nvml-lib "$E2E_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
    --format json --output "$T/spec.json" 2>"$T/generate.log" ||
    fail "gpuslice-cdi generate --format json failed: $(cat "$T/generate.log")"
spec_hook() { jq -r --arg stage "$1" "$2" <<<"$SLICE0_HOOKS"; }
SLICE0_HOOKS=$(jq '[.devices[] | select(.name == "slice0") | .containerEdits.hooks[]]' "$T/spec.json")
[[ $(spec_hook createContainer '[.[] | .hookName] | join(" ")') == "createContainer poststop" ]] ||
    fail "slice0's hooks in the spec are not one createContainer and one poststop: $SLICE0_HOOKS"
SPEC_HOOKS=$(spec_hook - 'length')
HOOK_PATH=$(spec_hook createContainer '.[] | select(.hookName == $stage) | .path')
mapfile -t CREATE_ARGS < <(spec_hook createContainer '.[] | select(.hookName == $stage) | .args[1:][]')
mapfile -t POSTSTOP_ARGS < <(spec_hook poststop '.[] | select(.hookName == $stage) | .args[1:][]')
[[ $HOOK_PATH == "$E2E_HOOK" ]] || fail "the spec's hook is $HOOK_PATH, not $E2E_HOOK"

DOCKER=$(e2e_docker_bin)

# ---------------------------------------------------------------------------------------------
# 1. docker run, three arms

ARMS=(none nohook hook)
declare -A ARM_ARGS=(
    [none]=""
    [nohook]="--device $NOHOOK_KIND=slice0"
    [hook]="--device gpuslice.dev/vgpu=slice0"
)
declare -A ARM_NAME=(
    [none]="no device"
    [nohook]="CDI device, hooks /bin/true"
    [hook]="gpuslice.dev/vgpu=slice0"
    [rtnone]="--runtime gpuslice, no slice"
    [runtime]="--runtime gpuslice, slice0"
)
if [[ -x $E2E_RUNTIME ]] && e2e_docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"gpuslice"'; then
    point_runtime_wrapper "$T/gpuslice.toml"
    ARMS+=(rtnone runtime)
    ARM_ARGS[rtnone]="--runtime gpuslice"
    ARM_ARGS[runtime]="--runtime gpuslice -e GPUSLICE_SLICES=slice0"
else
    note "no gpuslice-runtime arms: $E2E_RUNTIME not built, or Docker has no runtime \"gpuslice\" (tests/e2e/install-deps.sh)"
fi

# Tracing the hook's processes: a tracefs instance of its own, recording execs of this hook
# binary (by path: other builds' tests may run theirs meanwhile) and exits of processes named
# gpuslice-hook, with a clock that is the same on every CPU.
TRACE=
start_trace() {
    if [[ ! -d $TRACEFS/instances ]]; then
        mount -t tracefs nodev "$TRACEFS" 2>/dev/null || return 1
        defer umount "$TRACEFS"
    fi
    local dir=$TRACEFS/instances/gpuslice-bench-$$ events
    mkdir "$dir" 2>/dev/null || return 1
    defer rmdir "$dir"
    events=$dir/events/sched
    if echo mono >"$dir/trace_clock" &&
        echo "filename == \"$E2E_HOOK\"" >"$events/sched_process_exec/filter" &&
        echo "comm == \"$(basename "$E2E_HOOK" | cut -c1-15)\"" >"$events/sched_process_exit/filter" &&
        echo 1 >"$events/sched_process_exec/enable" && echo 1 >"$events/sched_process_exit/enable"; then
        TRACE=$dir
    else
        return 1
    fi
} 2>/dev/null

# collect_trace PHASE CONTAINERS: the hook runs traced since the last call, exec to exit in ms,
# paired by pid, in order: createContainer, then poststop, for each of CONTAINERS containers.
# Sets PHASE_create, PHASE_poststop and PHASE_count (hook runs per container), or PHASE_note.
collect_trace() {
    local phase=$1 containers=$2 runs lost
    if [[ -z $TRACE ]]; then
        declare -g "${phase}_note=$trace_note"
        return 0
    fi
    awk '
        function pid() { for (i = 1; i <= NF; i++) if ($i ~ /^pid=/) return substr($i, 5) }
        / sched_process_exec: / { p = pid(); start[p] = $4 + 0; order[n++] = p }
        / sched_process_exit: / { p = pid(); end[p] = $4 + 0 }
        END { for (i = 0; i < n; i++) if (order[i] in end) printf "%.3f\n", (end[order[i]] - start[order[i]]) * 1000; else print "unfinished" }
    ' "$TRACE/trace" >"$T/traced-$phase"
    : >"$TRACE/trace"
    runs=$(wc -l <"$T/traced-$phase")
    lost=$(grep -c unfinished "$T/traced-$phase" || true)
    declare -g "${phase}_count=$(awk -v n="$runs" -v c="$containers" 'BEGIN { printf "%g", n / c }')"
    if ((lost == 0 && runs == 2 * containers)); then
        declare -g "${phase}_create=$(awk 'NR % 2 == 1' "$T/traced-$phase" | median)" \
            "${phase}_poststop=$(awk 'NR % 2 == 0' "$T/traced-$phase" | median)"
    else
        declare -g "${phase}_note=traced $runs hook runs ($lost unfinished) for $containers containers"
    fi
}

note "warming up (${WARMUP} runs of each arm)"
for arm in "${ARMS[@]}"; do
    for _ in $(seq "$WARMUP"); do
        # shellcheck disable=SC2086  # the arm's arguments are words
        docker_gpu ${ARM_ARGS[$arm]} "$IMAGE" true >/dev/null 2>&1 || fail "docker run (${ARM_NAME[$arm]}) failed: $(cat "$T/docker-stderr")"
    done
done
trace_note=
start_trace || trace_note="no tracefs with sched events at $TRACEFS"

note "docker run: $ROUNDS rounds of ${#ARMS[@]} arms, in rotating order"
docker_started=$SECONDS
for ((round = 0; round < ROUNDS; round++)); do
    for ((i = 0; i < ${#ARMS[@]}; i++)); do
        arm=${ARMS[(round + i) % ${#ARMS[@]}]}
        t0=$EPOCHREALTIME
        # shellcheck disable=SC2086
        "$DOCKER" run --rm --network none "${HOOK_FAKE_ARGS[@]}" ${ARM_ARGS[$arm]} "$IMAGE" true >/dev/null 2>"$T/docker-stderr" ||
            fail "docker run (${ARM_NAME[$arm]}) failed: $(cat "$T/docker-stderr")"
        ms_since "$t0" >>"$T/docker-$arm"
    done
done
docker_secs=$((SECONDS - docker_started))
collect_trace docker "$ROUNDS"

# ---------------------------------------------------------------------------------------------
# 2. The hook on its own

# A fresh rootfs for each container, as Docker's overlay2 gives one: the image's rootfs as the
# lower layer, an empty upper layer, removed after the round.
make_glibc_rootfs "$T/rootfs"
BUNDLE=$T/bundle
mkdir -p "$BUNDLE/rootfs"
jq -n --arg root "$BUNDLE/rootfs" '{ociVersion: "1.0.2", root: {path: $root}}' >"$BUNDLE/config.json"
defer umount -l "$BUNDLE/rootfs"
fresh_rootfs() {
    rm -rf "$BUNDLE/upper" "$BUNDLE/work"
    mkdir -p "$BUNDLE/upper" "$BUNDLE/work"
    mount -t overlay overlay -o "lowerdir=$T/rootfs,upperdir=$BUNDLE/upper,workdir=$BUNDLE/work" "$BUNDLE/rootfs" ||
        fail "cannot mount an overlay on $BUNDLE/rootfs"
}

NS=(unshare --mount --propagation private --)
# The container's first process, as the runtime gives it to the hook: a process in a cgroup of
# its own (the hook records it for the host guard and refuses a container whose cgroups all
# read as /).
CG_PARENT=
for d in /sys/fs/cgroup/freezer /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [[ -w $d/cgroup.procs ]] && { CG_PARENT=$d; break; }
done
[[ -n $CG_PARENT ]] || fail "no writable cgroup hierarchy for the container's process"
CG=$CG_PARENT/gpuslice-bench-$$
mkdir "$CG" || fail "cannot make the cgroup $CG"
sleep infinity &
CONTAINER_PID=$!
echo "$CONTAINER_PID" >"$CG/cgroup.procs" || fail "cannot move $CONTAINER_PID into $CG"
defer rmdir "$CG"
defer wait "$CONTAINER_PID"
defer kill "$CONTAINER_PID"
# timed NAME CMD...: run CMD with the round's OCI state on stdin, its time in ms onto $T/NAME.
timed() {
    local name=$1 t0
    shift
    t0=$EPOCHREALTIME
    "$@" <<<"$STATE" >/dev/null 2>"$T/cmd-stderr" || fail "$* failed: $(cat "$T/cmd-stderr")"
    ms_since "$t0" >>"$T/$name"
}

note "the hook on its own: $HOOK_ROUNDS rounds, each against /bin/true"
for ((round = 0; round < HOOK_ROUNDS; round++)); do
    fresh_rootfs
    STATE=$(jq -nc --arg id "gpuslice-bench-$$-$round" --arg bundle "$BUNDLE" \
        --argjson pid "$CONTAINER_PID" '{ociVersion: "1.0.2", id: $id, status: "creating", pid: $pid, bundle: $bundle}')
    if ((round % 2 == 0)); then
        timed create-hook "${NS[@]}" "$HOOK_PATH" "${CREATE_ARGS[@]}"
        timed create-base "${NS[@]}" /bin/true
    else
        timed create-base "${NS[@]}" /bin/true
        timed create-hook "${NS[@]}" "$HOOK_PATH" "${CREATE_ARGS[@]}"
    fi
    STATE=${STATE/\"creating\"/\"stopped\"}
    if ((round % 2 == 0)); then
        timed poststop-hook "$HOOK_PATH" "${POSTSTOP_ARGS[@]}"
        timed poststop-base /bin/true
    else
        timed poststop-base /bin/true
        timed poststop-hook "$HOOK_PATH" "${POSTSTOP_ARGS[@]}"
    fi
    umount "$BUNDLE/rootfs"
done
slice_idle slice0 || fail "slice0 still records containers after the hook rounds: $("$E2E_GENERATOR" status --state-dir "$T/state")"
collect_trace direct "$HOOK_ROUNDS"

# ---------------------------------------------------------------------------------------------
# Report

declare -A STAGE_NAME=([create]=create-container [poststop]=poststop)

for arm in "${ARMS[@]}"; do
    declare "med_$arm=$(median <"$T/docker-$arm")"
done
for arm in "${ARMS[@]:1}"; do
    paired ratio "$T/docker-none" "$T/docker-$arm" >"$T/ratio-$arm"
    paired diff "$T/docker-none" "$T/docker-$arm" >"$T/diff-$arm"
    declare "ratio_$arm=$(median <"$T/ratio-$arm")" "diff_$arm=$(median <"$T/diff-$arm")"
done
paired diff "$T/docker-nohook" "$T/docker-hook" >"$T/diff-ours"
diff_ours=$(median <"$T/diff-ours")
for stage in create poststop; do
    paired diff "$T/$stage-base" "$T/$stage-hook" >"$T/$stage-added"
    declare "${stage}_hook=$(median <"$T/$stage-hook")" "${stage}_base=$(median <"$T/$stage-base")" \
        "${stage}_added=$(median <"$T/$stage-added")"
done
# shellcheck disable=SC2154  # declared above
{
    echo
    echo "load average (1 min) $LOAD_BEFORE at the start, $(cut -d' ' -f1 /proc/loadavg) at the end, on $(nproc) CPUs"
    echo "container start-up: docker run --rm --network none <glibc image> true, $ROUNDS interleaved rounds ($docker_secs s)"
    printf '  %-29s %9s %12s %9s %7s\n' arm median p25-p75 "vs none" ratio
    printf '  %-29s %6.1f ms %9s ms\n' "${ARM_NAME[none]}" "$med_none" "$(spread "$T/docker-none")"
    for arm in "${ARMS[@]:1}"; do
        med=med_$arm diff=diff_$arm ratio=ratio_$arm
        printf '  %-29s %6.1f ms %9s ms %+6.1f ms %6.3f\n' "${ARM_NAME[$arm]}" "${!med}" "$(spread "$T/docker-$arm")" "${!diff}" "${!ratio}"
    done
    printf '  gpuslice-hook against /bin/true hooks (paired): %+.1f ms\n' "$diff_ours"
    echo
    echo "gpuslice-hook, medians: run directly ($HOOK_ROUNDS rounds, each against the same launch of /bin/true)"
    echo "and in the Docker runs above; exec to exit from tracefs, nothing added to the hook"
    printf '  %-35s %8s %10s %9s %12s\n' "" hook /bin/true added "exec→exit"
    for stage in create poststop; do
        hook=${stage}_hook base=${stage}_base added=${stage}_added traced=direct_$stage
        printf '  %-35s %5.2f ms %7.2f ms %+6.2f ms %10s\n' "${STAGE_NAME[$stage]}, run directly" \
            "${!hook}" "${!base}" "${!added}" "$(ms_or_dash "${!traced:-}")"
        traced=docker_$stage
        printf '  %-35s %8s %10s %9s %10s\n' "${STAGE_NAME[$stage]}, in Docker" "" "" "" "$(ms_or_dash "${!traced:-}")"
    done
    for phase in direct docker; do
        note=${phase}_note
        [[ -z ${!note:-} ]] || printf '  exec→exit %s: not measured: %s\n' "$phase" "${!note}"
    done
    printf '  hook processes per container with one slice: %s (createContainer + poststop%s); NVIDIA'"'"'s CDI path: about %d\n' \
        "$SPEC_HOOKS" "${docker_count:+; $docker_count counted in the Docker runs}" "$NVIDIA_HOOKS"
    echo
    printf 'bench container start-up: ratio %.3f× (%+.1f ms) with a slice (target ≤ %s×): %s\n' \
        "$ratio_hook" "$diff_hook" "$RATIO_TARGET" "$(verdict "$ratio_hook" "$RATIO_TARGET")"
    if [[ -n ${ratio_runtime:-} ]]; then
        printf 'bench container start-up: ratio %.3f× (%+.1f ms) with a slice through gpuslice-runtime (target ≤ %s×): %s\n' \
            "$ratio_runtime" "$diff_runtime" "$RATIO_TARGET" "$(verdict "$ratio_runtime" "$RATIO_TARGET")"
    fi
    printf 'bench hook create-container: %+.2f ms over /bin/true (target ≤ %s ms): %s\n' \
        "$create_added" "$HOOK_TARGET_MS" "$(verdict "$create_added" "$HOOK_TARGET_MS")"
}
