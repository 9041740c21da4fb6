#!/usr/bin/env bash
# Container start-up cost of each way into a slice on podman and containerd's CRI, against a
# container with no GPU on the same engine, measured in the same run (tests/bench/startup.sh
# does Docker's CDI and gpuslice-runtime paths).
#
#   tests/bench/engines.sh          as root, after `make release` (`make bench` runs it)
#
# podman: `podman run --rm --network none --rootfs <glibc rootfs> true` with no device, with
# `--device gpuslice.dev/vgpu=slice0` (CDI), and with `--annotation gpuslice.dev/slices=slice0`
# and the hooks.d hook (precreate). containerd: one CRI round as the kubelet makes it
# (tests/cri-client: sandbox, container, start, wait, remove) with no device, with
# CDIDevices, and with the runtime handler gpuslice and the annotation. Arms are interleaved
# in rotating order; each ratio is the median of the rounds' ratios against "no GPU".
#
# ENGINES_ROUNDS (15) rounds. Prints `skipped: <why>` for an engine it cannot run.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$BENCH_DIR/../e2e/lib.sh"
for f in test_cdi_generated test_hook test_runtime test_containerd; do
    # shellcheck disable=SC1090
    . "$E2E_DIR/$f.sh"
done

ROUNDS=${ENGINES_ROUNDS:-15}
WARMUP=2

note() { printf '[bench] %s\n' "$*" >&2; }
engine_skip() { printf 'bench %s start-up: skipped: %s\n' "$1" "$2"; }
fail() {
    printf 'bench engines: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || { engine_skip engines "not root"; exit 0; }

T=$(mktemp -d "${TMPDIR:-/tmp}/gpuslice-bench-engines.XXXXXX")
export T
E2E_TEST_NAME=bench-engines
E2E_SKIP_FILE=$T/skip-reason
defer rm -rf "$T"
trap e2e_run_deferred EXIT
# The e2e requirements skip through `skip`: run in a subshell, a requirement not met is
# status 77 with the reason in $E2E_SKIP_FILE.
skip() {
    printf '%s\n' "$*" >"$E2E_SKIP_FILE"
    exit 77
}
(require_runtime_flow) || { engine_skip engines "$(cat "$E2E_SKIP_FILE" 2>/dev/null)"; exit 0; }

mkdir -p "$E2E_RUN_DIR"
exec 9>"$E2E_RUN_DIR/lock"
flock -w 600 9 || fail "another run holds $E2E_RUN_DIR/lock"

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; printf "%.3f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
paired() { paste "$2" "$3" | awk -v op="$1" '{ printf "%.6f\n", op == "ratio" ? $2 / $1 : $2 - $1 }'; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }'; }

# bench_engine NAME ARMS...: each arm is a function run_<arm>; prints the table.
bench_engine() {
    local name=$1 arm round i t0 base
    shift
    local arms=("$@")
    note "$name: warming up, then $ROUNDS rounds of ${#arms[@]} arms"
    for arm in "${arms[@]}"; do
        for _ in $(seq "$WARMUP"); do "run_$arm" >/dev/null 2>"$T/err" || fail "$name $arm: $(cat "$T/err")"; done
    done
    for ((round = 0; round < ROUNDS; round++)); do
        for ((i = 0; i < ${#arms[@]}; i++)); do
            arm=${arms[(round + i) % ${#arms[@]}]}
            t0=$EPOCHREALTIME
            "run_$arm" >/dev/null 2>"$T/err" || fail "$name $arm: $(cat "$T/err")"
            ms_since "$t0" >>"$T/$name-$arm"
        done
    done
    base=${arms[0]}
    printf '%s, %d interleaved rounds (load average %s)\n' "$name" "$ROUNDS" "$(cut -d' ' -f1 /proc/loadavg)"
    printf '  %-44s %9s %9s %7s\n' arm median "vs none" ratio
    printf '  %-44s %6.1f ms\n' "${ARM_LABEL[$base]}" "$(median <"$T/$name-$base")"
    for arm in "${arms[@]:1}"; do
        paired ratio "$T/$name-$base" "$T/$name-$arm" >"$T/r"
        paired diff "$T/$name-$base" "$T/$name-$arm" >"$T/d"
        printf '  %-44s %6.1f ms %+6.1f ms %6.3f\n' "${ARM_LABEL[$arm]}" "$(median <"$T/$name-$arm")" "$(median <"$T/d")" "$(median <"$T/r")"
        printf 'bench %s start-up, %s: ratio %.3f× (%+.1f ms)\n' "$name" "${ARM_LABEL[$arm]}" "$(median <"$T/r")" "$(median <"$T/d")" >>"$T/summary"
    done
}

declare -A ARM_LABEL=(
    [podman_none]="no GPU"
    [podman_cdi]="--device gpuslice.dev/vgpu=slice0 (CDI)"
    [podman_hooks]="--annotation gpuslice.dev/slices=slice0 (hooks.d)"
    [cri_none]="no GPU"
    [cri_cdi]="CDIDevices gpuslice.dev/vgpu=slice0"
    [cri_runtime]="handler gpuslice + annotation (runtime)"
)

hook_node false

# ---------------------------------------------------------------------------------------------
# podman
if (require_podman) >/dev/null 2>&1; then
    rm -f "$E2E_SKIP_FILE"
    make_glibc_rootfs "$T/rootfs"
    mkdir -p "$T/hooks.d"
    jq --arg path "$E2E_RUNTIME" --arg config "--gpuslice-config=$T/gpuslice.toml" \
        '.hook.path = $path | .hook.args += [$config]' "$REPO_ROOT/packaging/hooks.d/gpuslice.json" >"$T/hooks.d/gpuslice.json"
    # --rootfs is a flag: the rootfs is the first argument after the options.
    PODMAN_RUN=(run --rm --network none "${E2E_ULIMITS[@]}" "${HOOK_FAKE_ARGS[@]}")
    ROOTFS=(--rootfs "$T/rootfs")
    run_podman_none() { e2e_podman "$T/cdi" --hooks-dir "$T/hooks.d" "${PODMAN_RUN[@]}" "${ROOTFS[@]}" true; }
    run_podman_cdi() { e2e_podman "$T/cdi" --hooks-dir "$T/hooks.d" "${PODMAN_RUN[@]}" --device gpuslice.dev/vgpu=slice0 "${ROOTFS[@]}" true; }
    run_podman_hooks() { e2e_podman "$T/cdi" --hooks-dir "$T/hooks.d" "${PODMAN_RUN[@]}" --annotation gpuslice.dev/slices=slice0 "${ROOTFS[@]}" true; }
    bench_engine podman podman_none podman_cdi podman_hooks
else
    engine_skip podman "$(cat "$E2E_SKIP_FILE" 2>/dev/null)"
fi

# ---------------------------------------------------------------------------------------------
# containerd's CRI
rm -f "$E2E_SKIP_FILE"
if (require_containerd && command -v protoc) >/dev/null 2>&1; then
    build_cri_client
    containerd_base_config "$T/containerd.toml"
    printf '#!/bin/sh\nexec %q --gpuslice-config=%q "$@"\n' "$E2E_RUNTIME" "$T/gpuslice.toml" >"$T/gpuslice-runtime"
    chmod 755 "$T/gpuslice-runtime"
    "$E2E_GENERATOR" setup containerd --file "$T/containerd.toml" --config "$T/gpuslice.toml" >/dev/null
    "$E2E_GENERATOR" setup containerd --runtime --runtime-path "$T/gpuslice-runtime" --file "$T/containerd.toml" \
        --config "$T/gpuslice.toml" >/dev/null
    start_containerd
    IMAGE=$(containerd_images)
    run_cri_none() { cri_run "$IMAGE" -- true; }
    run_cri_cdi() { cri_run --cdi-device gpuslice.dev/vgpu=slice0 "$IMAGE" -- true; }
    run_cri_runtime() { cri_run --runtime-handler gpuslice --annotation gpuslice.dev/slices=slice0 "$IMAGE" -- true; }
    bench_engine containerd-cri cri_none cri_cdi cri_runtime
else
    engine_skip containerd-cri "$(cat "$E2E_SKIP_FILE" 2>/dev/null || echo 'no protoc (tests/e2e/install-deps.sh installs protobuf-compiler)')"
fi
echo
cat "$T/summary" 2>/dev/null || true
