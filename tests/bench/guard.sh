#!/usr/bin/env bash
# What one pass of the host guard (gpuslice-cdi daemon) costs, on a simulated node with 64
# slices and many processes, against a baseline pass of the same node without them, in the
# same run.
#
#   tests/bench/guard.sh            as root, after `make release` (`make bench` runs it)
#
# The node: two simulated 80 GiB GPUs split 32 ways each (64 slices of 2.5 GiB), and for each
# slice a "container" (a cgroup of its own with the hook's record) running GUARD_BENCH_PROCS
# (2) CUDA probes that each hold 128 MiB (plus their context): 128 GPU processes by default,
# plus 8 outside every slice. The guard runs GUARD_BENCH_PASSES (30) passes one interval
# (100 ms) apart with compute_guard = "throttle" (so every decision is taken each pass, none
# acts), and prints the median and 90th percentile of its own CPU and wall time per pass
# (`--json`'s cpu_us, wall_us: reading the state, the simulated NVML's calls, /proc, deciding),
# then the same for the node with its slices but no process and no record. CPU time is the
# guard's main thread; the simulated driver's NVML runs in it, so its cost is included (a real
# driver's NVML calls cost differently).
# GUARD_BENCH_WRAP runs the loaded passes under a wrapper (e.g. "perf record -g -o /tmp/p.data").
# Prints `skipped: <why>` and exits 0 where it cannot run (not root, no cgroup to write, …).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
CDI=$REPO/target/release/gpuslice-cdi
LIB=$REPO/target/release/libfakegpu.so
PASSES=${GUARD_BENCH_PASSES:-30}
PROCS=${GUARD_BENCH_PROCS:-2}
SPLIT=32

skip() {
    printf 'bench guard: skipped: %s\n' "$*"
    exit 0
}
note() { printf '[bench] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || skip "not root (cgroups for the containers)"
[[ -x $CDI && -f $LIB ]] || skip "target/release/gpuslice-cdi or libfakegpu.so not built (make release)"
command -v jq >/dev/null || skip "no jq"
command -v "${CC:-cc}" >/dev/null || skip "no C compiler for tests/cuda-probe"
hierarchy=
for h in /sys/fs/cgroup/freezer /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [[ -f $h/cgroup.procs ]] && mkdir "$h/gpuslice-bench-$$" 2>/dev/null; then
        rmdir "$h/gpuslice-bench-$$"
        hierarchy=$h
        break
    fi
done
[[ -n $hierarchy ]] || skip "no writable cgroup hierarchy"

T=$(mktemp -d /tmp/gpuslice-bench-guard.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for c in "$hierarchy"/gpuslice-bench-"$$"-*; do
        [[ -d $c ]] && { rmdir "$c" 2>/dev/null || sleep 0.2; rmdir "$c" 2>/dev/null || true; }
    done
    # generate put each slice's region and each GPU's board on a zram device of its own.
    local node dev id
    while IFS= read -r node; do
        dev=$((16#$(stat -c %t "$node"))):$((16#$(stat -c %T "$node")))
        id=$(basename "$(readlink "/sys/dev/block/$dev" 2>/dev/null)")
        [[ $id == zram* ]] && { echo "${id#zram}" >/sys/class/zram-control/hot_remove || true; } 2>/dev/null
    done < <(find "$T/state" -type b 2>/dev/null)
    rm -rf "$T"
}
trap cleanup EXIT

mkdir -p "$T/driver" "$T/dev" "$T/state" "$T/fake"
cp "$LIB" "$T/driver/libcuda.so.1"
cp "$LIB" "$T/driver/libnvidia-ml.so.1"
bash "$REPO/tests/cuda-probe/build.sh" "$T/probe" "$T/driver" >/dev/null
printf 'driver_version = "580.95.05"\ncuda_version = 13000\n' >"$T/fakegpu.toml"
for i in 0 1; do
    cat >>"$T/fakegpu.toml" <<EOF
[[gpu]]
uuid = "GPU-6a3f1d2e-000$i-4e2a-9c1b-00000000000$i"
name = "Simulated H100"
memory = "80GiB"
sm_count = 132
minor = $i
pci_bus_id = "00000000:0$((i + 1)):00.0"
EOF
    mknod "$T/dev/nvidia$i" c 195 "$i"
done
mknod "$T/dev/nvidiactl" c 195 255
cat >"$T/gpuslice.toml" <<EOF
state_dir = "$T/state"
spec_dir = "$T/cdi"
[defaults]
split_count = $SPLIT
[guard]
interval = "100ms"
compute_guard = "throttle"
compute_window = "10s"
EOF
export FAKEGPU_CONFIG=$T/fakegpu.toml FAKEGPU_STATE_DIR=$T/fake
"$CDI" generate --config "$T/gpuslice.toml" --nvml-lib "$LIB" --dev-root "$T" --output "$T/cdi/x.yaml" 2>"$T/generate.log" ||
    { cat "$T/generate.log" >&2; exit 1; }

# passes LABEL: run the guard, print its per-pass figures.
passes() {
    local wrap=()
    [[ $1 == full && -n ${GUARD_BENCH_WRAP:-} ]] && read -ra wrap <<<"$GUARD_BENCH_WRAP"
    "${wrap[@]}" "$CDI" daemon --config "$T/gpuslice.toml" --nvml-lib "$LIB" --passes "$PASSES" --json 2>"$T/guard.log" >"$T/$1.json"
    jq -s '
        def pct(p): sort | .[(length * p | floor)];
        { processes: (.[-1].snapshot.processes | length), slices: (.[-1].snapshot.slices | length),
          actions: ([.[].actions[]] | length),
          cpu_median: ([.[].cpu_us] | pct(0.5)), cpu_p90: ([.[].cpu_us] | pct(0.9)),
          wall_median: ([.[].wall_us] | pct(0.5)), wall_p90: ([.[].wall_us] | pct(0.9)) }' "$T/$1.json"
}

note "baseline: 64 slices, no process, no record"
base=$(passes baseline)

note "starting $((64 * PROCS)) probes in 64 cgroups, and 8 outside every slice"
spawn() { # CGROUP GPU: a probe holding 128 MiB in CGROUP
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$1" \
        env LD_LIBRARY_PATH="$T/driver" "$T/probe/cuda-probe" --device "$2" fill --path alloc --chunk 128M \
        --max-chunks 1 --hold-forever >"$T/probe-$BASHPID-$RANDOM.out" 2>&1 &
    pids+=($!)
}
for s in $(seq 0 63); do
    c=$hierarchy/gpuslice-bench-$$-$s
    mkdir "$c"
    sh -c 'echo $$ > "$0/cgroup.procs" && exec sleep 3600' "$c" &
    init=$!
    pids+=("$init")
    until grep -q "gpuslice-bench-$$-$s" "/proc/$init/cgroup" 2>/dev/null; do sleep 0.01; done
    mkdir -p "$T/state/host/containers/c$s"
    {
        printf 'format=1\nid=c%s\nslice=slice%s\npid=%s\nname=\npod=\nnamespace=\n' "$s" "$s" "$init"
        sed 's/^/cgroup=/' "/proc/$init/cgroup"
    } >"$T/state/host/containers/c$s/slice$s"
    for _ in $(seq 1 "$PROCS"); do spawn "$c" $((s / SPLIT)); done
done
c=$hierarchy/gpuslice-bench-$$-stray
mkdir "$c"
for _ in $(seq 1 8); do spawn "$c" 0; done
deadline=$((SECONDS + 120))
while (($(grep -lx holding "$T"/probe-*.out 2>/dev/null | wc -l) < 64 * PROCS + 8)); do
    ((SECONDS < deadline)) || { note "probes not holding after 120 s"; exit 1; }
    sleep 0.5
done

note "measuring"
full=$(passes full)
printf 'bench guard: one pass, %s passes 100 ms apart (median, 90th percentile):\n' "$PASSES"
jq -nr --argjson b "$base" --argjson f "$full" '
    def row(name; x): "  \(name): \(x.slices) slices, \(x.processes) GPU processes: CPU \(x.cpu_median) µs (p90 \(x.cpu_p90)), wall \(x.wall_median) µs (p90 \(x.wall_p90)), \(x.actions) actions";
    row("no process"; $b), row("loaded"; $f),
    "  loaded against no process: CPU \(($f.cpu_median / ([$b.cpu_median, 1] | max)) * 100 | round / 100)×; at a 1 s interval the guard takes \(($f.cpu_median / 10000) * 100 | round / 100) % of one core"'
grep -q 'outside every slice' "$T/guard.log" || note "expected the 8 strays to be reported"
