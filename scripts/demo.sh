#!/usr/bin/env bash
# gpuslice on a machine without a GPU (`make demo`). A simulated node with two 80 GiB GPUs
# (gpuslice's simulated driver, tests/fake-gpu) gets the real gpuslice-cdi, gpuslice-hook and
# libgpuslice.so, and real containers run through Docker or podman on a 40 GiB slice: what
# they see, an allocation refused at the limit, two containers sharing one slice, and
# `gpuslice-cdi status` while they run and after.
#
#   scripts/demo.sh [--engine docker|podman] [--keep DIR] [--install]
#
#   --engine E  docker: a Docker 26+ daemon with CDI that reads /run/gpuslice-e2e/cdi (what
#               tests/e2e/install-deps.sh sets up); podman: podman and runc. Default: Docker
#               when such a daemon answers, else podman.
#   --keep DIR  work in DIR (empty or absent) and keep it; default: a directory under /tmp,
#               removed at the end. Containers, the image and the spec file the demo gives
#               an engine are removed either way.
#   --install   run tests/e2e/install-deps.sh first when the engine or a tool is missing
#               (without it the demo installs nothing and says what is missing)
#
# Root only. Needs `make release` first (`make demo` does both). Exit status 0 when every
# step showed what it should, 1 otherwise: the demo doubles as a smoke test of the whole flow.
set -eEuo pipefail

# The e2e tier's fixtures: simulated driver root, device nodes, glibc rootfs with cuda-probe,
# engine wrappers. Definitions only; the variables they read are set below.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"
cd "$REPO_ROOT"

usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

engine=auto keep="" install=0
while (($#)); do
    case $1 in
        --engine | --keep)
            (($# >= 2)) || { printf 'demo: %s needs a value\n' "$1" >&2; exit 2; }
            if [[ $1 == --engine ]]; then engine=$2; else keep=$2; fi
            shift 2
            ;;
        --engine=*) engine=${1#*=} && shift ;;
        --keep=*) keep=${1#*=} && shift ;;
        --install) install=1 && shift ;;
        -h | --help) usage && exit 0 ;;
        *) printf 'demo: unknown argument %s (see --help)\n' "$1" >&2 && exit 2 ;;
    esac
done
[[ $engine == @(auto|docker|podman) ]] || { printf 'demo: --engine docker or podman, not %s\n' "$engine" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Presentation

if [[ -t 1 ]]; then
    BOLD=$'\e[1m' RED=$'\e[31m' GREEN=$'\e[32m' YELLOW=$'\e[33m' CYAN=$'\e[36m' OFF=$'\e[0m'
else
    BOLD="" RED="" GREEN="" YELLOW="" CYAN="" OFF=""
fi
W="" STEP=0 STEP_TITLE="preparing"

step() {
    STEP=$((STEP + 1)) STEP_TITLE=$1
    printf '\n%s── %d. %s %s%s\n' "$BOLD" "$STEP" "$1" "${YELLOW}[simulated GPU]" "$OFF"
}
say() { printf '%s\n' "$@"; }
ok() { printf '%s✓ %s%s\n' "$GREEN" "$*" "$OFF"; }

fail() {
    printf '\n%sDEMO FAILED%s at step %d (%s): %s\n' "$RED$BOLD" "$OFF" "$STEP" "$STEP_TITLE" "$(abbrev <<<"$*")" >&2
    exit 1
}
die() {
    printf '%sdemo:%s %s\n' "$RED$BOLD" "$OFF" "$*" >&2
    exit 1
}
# The fixtures' notes (a missing patchelf, a registered major 195).
e2e_log() { printf '%snote:%s %s\n' "$YELLOW" "$OFF" "$*" >&2; }
trap 'printf "%serror:%s %s (status %s) at line %s\n" "$RED" "$OFF" "$BASH_COMMAND" "$?" "$LINENO" >&2' ERR

# abbrev: standard input with the work dir written $DEMO and the repository's paths relative
# (the demo runs from the repository's root).
abbrev() {
    local line
    while IFS= read -r line; do
        [[ -z $W ]] || line=${line//"$W"/\$DEMO}
        printf '%s\n' "${line//"$REPO_ROOT"\//}"
    done
}

# cmdline WORD...: the words as a command line a shell would read back, abbreviated. Words of
# the form $NAME are printed as they are: shorthands the narration has explained.
cmdline() {
    local word out=() q="'"
    for word in "$@"; do
        word=$(abbrev <<<"$word")
        if [[ $word =~ ^\$[A-Z_]+$ || (-n $word && ${word//\$DEMO/} =~ ^[A-Za-z0-9_./:=,@%+-]*$) ]]; then
            out+=("$word")
        else
            out+=("'${word//$q/$q\\$q$q}'")
        fi
    done
    printf '%s\n' "${out[*]}"
}

# present TEXT: command output, indented, with byte counts also given in GiB.
present() {
    [[ -n $1 ]] || return 0
    abbrev <<<"$1" | awk '
        match($0, /^[a-z0-9_]*(total|free|used|reserved|size)[a-z0-9_]*=[0-9]+$/) {
            split($0, kv, "=")
            if (kv[2] + 0 >= 1048576) { printf "    %-40s (%.2f GiB)\n", $0, kv[2] / 1073741824; next }
        }
        { print "    " $0 }'
}

# shown DISPLAY CMD...: print "+ DISPLAY", run CMD, show its output (stdout and stderr). Sets
# OUT to the output and RC to the status; never fails itself.
OUT="" RC=0
shown() {
    local display=$1
    shift
    printf '%s+ %s%s\n' "$CYAN" "$display" "$OFF"
    RC=0
    # T is set once, below (lib.sh's test runner sets it in subshells, hence the warning).
    # shellcheck disable=SC2031
    "$@" >"$T/out" 2>&1 </dev/null || RC=$?
    # shellcheck disable=SC2031
    OUT=$(<"$T/out")
    present "$OUT"
}

# run CMD...: shown, the command line being CMD itself.
run() { shown "$(cmdline "$@")" "$@"; }

# value KEY TEXT: the first value of a KEY=VALUE line in TEXT.
value() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

gib() { printf '%d GiB' $(($1 >> 30)); }

# ---------------------------------------------------------------------------------------------
# Preflight: root, the build, the tools, the engine.

[[ $(id -u) -eq 0 ]] || die "run as root: it makes device nodes and runs containers (build with 'make release', then 'sudo scripts/demo.sh')"
GENERATOR_BIN=$REPO_ROOT/target/release/gpuslice-cdi
for f in "$GENERATOR_BIN" "$E2E_HOOK" "$E2E_SHIM" "$E2E_FAKEGPU_LIB"; do
    [[ -f $f ]] || die "${f#"$REPO_ROOT"/} is not built: 'make demo' builds everything first (or run 'make release')"
done

version_at_least() { [[ $(printf '%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

missing_tools() {
    local tool
    for tool in "${CC:-cc}" jq patchelf ldconfig mknod unshare flock; do
        command -v "$tool" >/dev/null || printf '%s ' "$tool"
    done
    static_busybox >/dev/null || printf 'busybox-static '
}

# Why Docker cannot run the demo; nothing when it can.
docker_problem() {
    local version dirs
    command -v "$(e2e_docker_bin)" >/dev/null || { echo "Docker is not installed"; return; }
    version=$(e2e_docker version --format '{{.Server.Version}}' 2>/dev/null) || { echo "no Docker daemon answers"; return; }
    version_at_least "$version" "$E2E_MIN_DOCKER" || { echo "Docker $version is older than $E2E_MIN_DOCKER (no CDI)"; return; }
    dirs=$(e2e_docker info --format '{{json .CDISpecDirs}}' 2>/dev/null)
    [[ $dirs == *"\"$E2E_DOCKER_CDI_DIR\""* ]] ||
        echo "the Docker daemon does not read $E2E_DOCKER_CDI_DIR (its CDI spec dirs: ${dirs:-none})"
}

podman_problem() {
    command -v podman >/dev/null || { echo "podman is not installed"; return; }
    command -v runc >/dev/null || echo "runc is not installed"
}

# Picks ENGINE, or prints why none can be used (status 1).
pick_engine() {
    local dp pp
    case $engine in
        docker) dp=$(docker_problem) && [[ -z $dp ]] && ENGINE=docker && return 0
            echo "$dp" && return 1 ;;
        podman) pp=$(podman_problem) && [[ -z $pp ]] && ENGINE=podman && return 0
            echo "$pp" && return 1 ;;
    esac
    dp=$(docker_problem)
    [[ -z $dp ]] && ENGINE=docker && return 0
    pp=$(podman_problem)
    [[ -z $pp ]] && ENGINE=podman && ENGINE_NOTE="not Docker: $dp" && return 0
    echo "Docker: $dp; podman: $pp"
    return 1
}

ENGINE="" ENGINE_NOTE=""
problem=$(pick_engine) || true
tools=$(missing_tools)
if [[ -n $problem || -n $tools ]] && ((install)); then
    say "Installing what the demo needs: tests/e2e/install-deps.sh"
    "$E2E_DIR/install-deps.sh" || die "tests/e2e/install-deps.sh failed"
    problem=$(pick_engine) || true
    tools=$(missing_tools)
fi
[[ -z $tools ]] || die "missing: ${tools% }. Install them with 'sudo tests/e2e/install-deps.sh' (Debian 12), or run the demo with --install"
[[ -z $problem ]] || die "no container engine for the demo: $problem.
  'sudo tests/e2e/install-deps.sh' (Debian 12) installs podman and runc, and Docker 26 with CDI
  reading $E2E_DOCKER_CDI_DIR; or run the demo with --install (make demo DEMO_ARGS=--install)."
pick_engine >/dev/null # sets ENGINE in this shell (the call above ran in a subshell)

# ---------------------------------------------------------------------------------------------
# The work dir and what is cleaned up at the end.

if [[ -n $keep ]]; then
    mkdir -p "$keep"
    [[ -z $(ls -A "$keep") ]] || die "--keep $keep: the directory is not empty"
    W=$(realpath "$keep")
else
    W=$(mktemp -d /tmp/gpuslice-demo.XXXXXX)
fi
T=$W/tmp
mkdir -p "$T"
# The fixtures' caches and podman's storage go in the work dir too.
E2E_STATE_DIR=$W/cache
E2E_PODMAN_ROOT=$W/podman
E2E_PODMAN_RUNROOT=$W/podman/run
started=$SECONDS waited=0 REMOVED=""

at_exit() {
    local status=$?
    trap - ERR
    e2e_run_deferred
    if [[ -n $keep ]]; then
        say "" "The work dir is kept: $W"
    else
        rm -rf "$W"
    fi
    if ((status == 0)); then
        printf '\n%sDemo passed%s (%s, %ds%s). Removed: %s.\n' \
            "$GREEN$BOLD" "$OFF" "$ENGINE" "$((SECONDS - started - waited))" \
            "$( ((waited == 0)) || printf ' after %ds waiting for the lock' "$waited")" "$REMOVED"
    fi
    exit "$status"
}
trap at_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Where the engine finds the spec. Not the host's /etc/cdi or /var/run/cdi: a real gpuslice
# install keeps its gpuslice.yaml there, and Docker drops a device that two specs of one
# directory define. Docker reads $E2E_DOCKER_CDI_DIR last (install-deps.sh lists it in
# daemon.json's cdi-spec-dirs), and a later directory wins, so the demo's slices also shadow
# a real install's. podman 4.3 reads only /etc/cdi and /var/run/cdi, so it runs in a private
# mount namespace where the work dir's cdi/ is /var/run/cdi (e2e_podman).
if [[ $ENGINE == docker ]]; then
    SPEC_DIR=$E2E_DOCKER_CDI_DIR
    ANNOTATIONS=true
    IMAGE=gpuslice-demo/probe:latest
    IMAGE_ARGS=("$IMAGE")
    REMOVED="the containers, the image $IMAGE, $SPEC_DIR/gpuslice.yaml"
    ENGINE_VERSION=$(e2e_docker version --format '{{.Server.Version}}')
    ENGINE_NAME=Docker
else
    SPEC_DIR=$W/cdi
    # podman 4.3 (Debian 12) loads CDI specs up to 0.5.0, which have no annotations.
    ANNOTATIONS=$(podman_annotations)
    IMAGE_ARGS=(--rootfs "$W/rootfs")
    REMOVED="the containers"
    ENGINE_VERSION=$(podman version --format '{{.Client.Version}}')
    ENGINE_NAME=podman
fi
SPEC=$SPEC_DIR/gpuslice.yaml
[[ -n $keep ]] || REMOVED+=" and the work dir"
HOLDER=gpuslice-demo-holder
BIN=$W/bin

# engine ARGS...: the engine's command. Docker notices a new spec file through inotify, a moment
# later: until then a device is "unresolvable", and that one answer is retried for 10 s.
engine() {
    if [[ $ENGINE == podman ]]; then
        # Raising rlimits needs CAP_SYS_RESOURCE, which this machine's podman lacks.
        if [[ $1 == run ]]; then set -- run "${E2E_ULIMITS[@]}" "${@:2}"; fi
        e2e_podman "$SPEC_DIR" "$@"
        return
    fi
    local deadline=$((SECONDS + 10)) status
    while :; do
        status=0
        e2e_docker "$@" >"$T/engine.out" 2>&1 || status=$?
        if ((status != 0)) && grep -q 'unresolvable CDI devices' "$T/engine.out" && ((SECONDS < deadline)); then
            sleep 0.2
            continue
        fi
        cat "$T/engine.out"
        return "$status"
    done
}

# container ARGS...: `ENGINE run --rm --network none $SIMULATED_GPU ARGS`, shown that way.
container() {
    shown "$ENGINE run --rm --network none \$SIMULATED_GPU $(cmdline "$@")" \
        engine run --rm --network none "${SIMULATED_GPU[@]}" "$@"
}

# slice_json FIELD [SLICE]: a field of slice0's (or SLICE's) entry in `gpuslice-cdi status --json`.
slice_json() {
    gpuslice-cdi status --config "$W/gpuslice.toml" --json |
        jq -r --arg s "${2:-slice0}" ".[] | select(.slice == \$s) | $1"
}
slice_holds_at_least() { (($(slice_json .memory_used_bytes) >= $1)); }
slice_idle() { [[ $(slice_json .memory_used_bytes) == 0 && $(slice_json '.containers | length') == 0 ]]; }

# setup WHAT CMD...: a fixture step, its output in $W/setup.log, shown only when it fails.
# The subshell runs in the background so that `set -e` holds in it (a subshell on the left
# of || would run with -e ignored).
setup() {
    local what=$1 status=0
    shift
    ("$@") >>"$W/setup.log" 2>&1 </dev/null &
    wait $! || status=$?
    ((status == 0)) || fail "$what failed; the end of $W/setup.log:"$'\n'"$(tail -n 15 "$W/setup.log")"
}

# ---------------------------------------------------------------------------------------------
# The walkthrough

NL=$'\n'

cat <<EOF
${BOLD}${YELLOW}================================================================================
  gpuslice demo: SIMULATED GPU
================================================================================${OFF}
  This machine has no GPU. The NVIDIA driver in this demo is gpuslice's simulated
  GPU (tests/fake-gpu/libfakegpu.so standing in for libcuda.so.1 and
  libnvidia-ml.so.1): two simulated NVIDIA H100 80GB, 80 GiB each. Everything else
  is real: gpuslice-cdi, the CDI spec, the OCI hook gpuslice-hook, the
  interception library libgpuslice.so, and $ENGINE_NAME running containers.
${BOLD}${YELLOW}================================================================================${OFF}
engine:   $ENGINE $ENGINE_VERSION${ENGINE_NOTE:+$NL          ($ENGINE_NOTE)}
work dir: $W (shown as \$DEMO; $(if [[ -n $keep ]]; then echo kept; else echo removed; fi) at the end)
EOF
if [[ $ENGINE == podman ]]; then
    cat <<EOF
podman:   'podman' below is podman with its own storage under \$DEMO/podman, runc,
          fixtures/containers.conf, --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
          on 'run', in a private mount namespace where \$DEMO/cdi is /var/run/cdi
          (podman 4.3 reads CDI specs only there and in /etc/cdi).
EOF
fi

if [[ $ENGINE == docker ]]; then
    # The e2e tier empties $E2E_DOCKER_CDI_DIR before and after each run; this lock keeps
    # them apart.
    mkdir -p "$E2E_RUN_DIR" "$SPEC_DIR"
    exec 9>"$E2E_RUN_DIR/lock"
    if ! flock -n 9; then
        say "Waiting for the end-to-end tests running now (they hold $E2E_RUN_DIR/lock)…"
        flock -w 900 9 || die "$E2E_RUN_DIR/lock is still held after 15 minutes"
        waited=$((SECONDS - started))
    fi
    others=$(grep -lE '^kind: *["'\'']?gpuslice\.dev/vgpu|"kind": *"gpuslice\.dev/vgpu"' "$SPEC_DIR"/*.yaml "$SPEC_DIR"/*.json 2>/dev/null |
        grep -vxF "$SPEC" || true)
    [[ -z $others ]] || die "$(tr '\n' ' ' <<<"$others")in $SPEC_DIR also defines gpuslice.dev/vgpu devices, and Docker drops a device two specs of one directory define. It is another run's spec: let that run end, or remove the file."
fi

step "A simulated node: two 80 GiB GPUs"
say "What a GPU node has, made up in \$DEMO: the GPUs (fakegpu.toml), their device" \
    "nodes (devroot/dev/nvidia0, nvidia1, nvidiactl, nvidia-uvm: unused numbers, nothing" \
    "behind them), a driver root (driver/: libcuda.so.1 and libnvidia-ml.so.1 are the" \
    "simulated driver; usr/bin/nvidia-smi is a simulated stand-in that prints NVML's" \
    "memory view), and an application image with no driver inside: busybox, glibc and" \
    "cuda-probe, a small C program that uses the CUDA driver API as the CUDA runtime does."
cp "$E2E_FAKEGPU_TOML" "$W/fakegpu.toml"
E2E_FAKEGPU_TOML=$W/fakegpu.toml
setup "making the device nodes" make_devroot "$W/devroot"
setup "making the simulated driver root" make_driver_root "$W/driver"
setup "building cuda-probe and the application's root filesystem" make_glibc_rootfs "$W/rootfs"
if [[ $ENGINE == docker ]]; then
    defer e2e_docker rmi -f "$IMAGE"
    setup "importing the image $IMAGE" docker_image_from_rootfs "$W/rootfs" "$IMAGE"
fi
mapfile -t SIMULATED_GPU < <(fakegpu_run_args "$W/fakegpu-state")
run grep -E '^(name|memory|minor) ' "$W/fakegpu.toml"
[[ $(grep -c '^memory = "80GiB"' <<<"$OUT" || true) == 2 ]] || fail "fakegpu.toml does not describe two 80 GiB GPUs"
say "gpuslice-cdi reads the GPUs through NVML, here the simulated one:"
export FAKEGPU_CONFIG=$W/fakegpu.toml GPUSLICE_NVML_LIB=$W/driver/$E2E_DRIVER_LIBDIR/libnvidia-ml.so.1
printf '%s+ %s%s\n' "$CYAN" "$(cmdline export "FAKEGPU_CONFIG=$FAKEGPU_CONFIG" "GPUSLICE_NVML_LIB=$GPUSLICE_NVML_LIB")" "$OFF"
ok "two simulated H100s, 80 GiB each; image: ${IMAGE:-the root filesystem \$DEMO/rootfs}"

step "Install gpuslice"
say "On a GPU node these go to /usr/bin and /usr/lib/gpuslice; here, to \$DEMO."
mkdir -p "$BIN"
run install -m 0755 "$GENERATOR_BIN" "$E2E_HOOK" "$E2E_SHIM" "$BIN/"
((RC == 0)) || fail "install failed"
export PATH=$BIN:$PATH
printf '%s+ export PATH=%s%s\n' "$CYAN" "\$DEMO/bin:\$PATH" "$OFF"
ok "gpuslice-cdi, gpuslice-hook and libgpuslice.so in \$DEMO/bin"

step "Configure: two slices per GPU"
# generate puts each slice's region and each GPU's board on a zram device; they go at the end,
# after the demo's containers.
defer remove_state_devices "$W/state"
cat >"$W/gpuslice.toml" <<EOF
# The demo node's gpuslice config; on a GPU node /etc/gpuslice/config.toml (every key is
# documented in conf/config.toml). Only the paths differ from the defaults.
kind = "gpuslice.dev/vgpu"
# default /var/run/cdi; here a spec directory only this engine is pointed at
spec_dir = "$SPEC_DIR"
# default /run/gpuslice: each slice's limits file, and its shared region and its GPU's board
# (zram devices)
state_dir = "$W/state"
hook_path = "$BIN/gpuslice-hook"
shim_path = "$BIN/libgpuslice.so"
# default /: where the driver's files are, here the simulated driver
driver_root = "$W/driver"
# podman 4.3 reads CDI specs up to version 0.5.0, which have no annotations
annotations = $ANNOTATIONS

[defaults]
mode = "shim"
# each 80 GiB GPU becomes two 40 GiB slices: slice0, slice1 on GPU 0, slice2, slice3 on GPU 1
split_count = 2
EOF
run cat "$W/gpuslice.toml"
ok "split_count = 2"

step "Plan the slices: gpuslice-cdi list"
run gpuslice-cdi list --config "$W/gpuslice.toml" --dev-root "$W/devroot"
((RC == 0)) || fail "gpuslice-cdi list failed"
rows=$(awk '$1 ~ /^slice[0-3]$/ && $4 == "40.00" && $NF == "shim"' <<<"$OUT" | wc -l)
((rows == 4)) || fail "expected slice0..slice3 with 40.00 GiB each, got:"$'\n'"$OUT"
ok "four slices of 40 GiB: slice0, slice1 on GPU 0; slice2, slice3 on GPU 1"

step "Generate the CDI spec: gpuslice-cdi generate"
[[ $ENGINE == podman ]] || defer rm -f "$SPEC"
run gpuslice-cdi generate --config "$W/gpuslice.toml" --dev-root "$W/devroot"
((RC == 0)) || fail "gpuslice-cdi generate failed"
[[ -s $SPEC ]] || fail "gpuslice-cdi generate wrote no $SPEC"
run gpuslice-cdi validate "$SPEC"
((RC == 0)) || fail "the generated spec does not validate"
say "One device per slice. slice0 gives a container GPU 0's device node, its name in" \
    "GPUSLICE_SLICE, and gpuslice-hook at createContainer (mount the driver, the interception" \
    "library and the slice's state into the container) and at poststop (release the slice):"
run sed -n '/^- name: slice0$/,/hookName: poststop/p' "$SPEC"
say "    … (poststop: the same arguments)"
for want in "- GPUSLICE_SLICE=slice0" "path: /dev/nvidia0" "hookName: createContainer" \
    "hookName: poststop" "path: $BIN/gpuslice-hook"; do
    grep -qF -- "$want" <<<"$OUT" || fail "slice0 in the spec has no '$want'"
done
ok "$(abbrev <<<"$SPEC"): slice0..slice3 and all"

step "A container on slice0 sees 40 GiB, not 80"
say "Containers ask for a slice with --device gpuslice.dev/vgpu=slice0. \$SIMULATED_GPU is what" \
    "lets the simulated driver in the containers act as the same two GPUs (simulation only:" \
    "a real driver needs nothing of the sort):" \
    "  SIMULATED_GPU=$(cmdline "${SIMULATED_GPU[@]}")"
container --device gpuslice.dev/vgpu=slice0 "${IMAGE_ARGS[@]}" cuda-probe meminfo
((RC == 0)) || fail "the container on slice0 failed"
total=$(value total "$OUT")
[[ $total == $((40 << 30)) ]] || fail "cuMemGetInfo in the container says total=$total, not 40 GiB"
[[ $(value device_total "$OUT") == $((40 << 30)) ]] || fail "cuDeviceTotalMem in the container is not 40 GiB"
ok "cuMemGetInfo and cuDeviceTotalMem: 40 GiB"
container --device gpuslice.dev/vgpu=slice0 "${IMAGE_ARGS[@]}" nvidia-smi
((RC == 0)) || fail "nvidia-smi in the container failed"
total=$(value total "$OUT")
[[ $total == $((40 << 30)) ]] || fail "NVML in the container says total=$total, not 40 GiB"
ok "nvidia-smi (simulated; NVML's memory view): 40 GiB"

step "An allocation past the limit is refused"
container --device gpuslice.dev/vgpu=slice0 "${IMAGE_ARGS[@]}" cuda-probe alloc --path alloc --size 41G
((RC != 0)) || fail "41 GiB were allocated in a 40 GiB slice"
[[ $(value error_name "$OUT") == CUDA_ERROR_OUT_OF_MEMORY ]] || fail "the 41 GiB allocation did not fail with CUDA_ERROR_OUT_OF_MEMORY"
ok "41 GiB in a 40 GiB slice: CUDA_ERROR_OUT_OF_MEMORY (the GPU itself has 80 GiB)"

step "Two containers share slice0"
say "One container takes 30 GiB and holds it, in the background:"
if [[ $ENGINE == podman ]]; then RM_HOLDER=(rm -f -t 0 "$HOLDER"); else RM_HOLDER=(rm -f "$HOLDER"); fi
engine "${RM_HOLDER[@]}" >/dev/null 2>&1 || true
defer engine "${RM_HOLDER[@]}"
shown "$ENGINE run -d --name $HOLDER --network none \$SIMULATED_GPU $(cmdline --device gpuslice.dev/vgpu=slice0 "${IMAGE_ARGS[@]}" cuda-probe fill --path alloc --chunk 1G --max-chunks 30 --hold-forever)" \
    engine run -d --name "$HOLDER" --network none "${SIMULATED_GPU[@]}" --device gpuslice.dev/vgpu=slice0 \
    "${IMAGE_ARGS[@]}" cuda-probe fill --path alloc --chunk 1G --max-chunks 30 --hold-forever
((RC == 0)) || fail "the container holding 30 GiB did not start"
wait_for 30 slice_holds_at_least $((30 << 30)) ||
    fail "slice0 never held 30 GiB; the holder's log: $(engine logs "$HOLDER" 2>&1 | tail -n 5)"
run gpuslice-cdi status --config "$W/gpuslice.toml"
[[ $(slice_json '.containers | length') == 1 ]] || fail "gpuslice-cdi status does not show the holder on slice0"
ok "slice0: $(slice_json .memory_used_bytes | awk '{printf "%.2f GiB", $1 / 1073741824}') in use by one container (30 GiB and its CUDA context's 256 MiB)"
say "A second container on slice0 sees what is left, and 12 GiB more do not fit:"
container --device gpuslice.dev/vgpu=slice0 "${IMAGE_ARGS[@]}" sh -c 'cuda-probe meminfo && cuda-probe alloc --path alloc --size 12G'
free=$(value free "$OUT")
[[ -n $free ]] || fail "the second container's cuda-probe meminfo printed no free="
((free < (10 << 30))) || fail "the second container's free memory ($free) ignores the first one's 30 GiB"
((RC != 0)) || fail "12 GiB fit beside 30 GiB in a 40 GiB slice"
[[ $(value error_name "$OUT") == CUDA_ERROR_OUT_OF_MEMORY ]] || fail "the 12 GiB allocation did not fail with CUDA_ERROR_OUT_OF_MEMORY"
ok "free < 10 GiB; 12 GiB refused: CUDA_ERROR_OUT_OF_MEMORY"

step "The holder goes, its memory comes back"
shown "$ENGINE $(cmdline "${RM_HOLDER[@]}")" engine "${RM_HOLDER[@]}"
((RC == 0)) || fail "removing the holder failed"
wait_for 20 slice_idle || fail "slice0 still shows memory or containers after the holder went"
run gpuslice-cdi status --config "$W/gpuslice.toml"
ok "slice0: 0 GiB in use, no containers"
