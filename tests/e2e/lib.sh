# shellcheck shell=bash
# Shared helpers of the end-to-end tier: paths, the test registry, fixtures (busybox rootfs,
# Docker image, device-node root, CDI spec dirs), engine checks and cleanup.
# Sourced by run.sh, install-deps.sh and the test_*.sh files; defining things only, no side effects.
# T and E2E_TEST_NAME are set per test inside e2e_run_test's subshell, on purpose:
# shellcheck disable=SC2030,SC2031

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)

# Persistent state written by install-deps.sh (what could be installed, and why not).
E2E_STATE_DIR=${E2E_STATE_DIR:-/var/lib/gpuslice-e2e}
E2E_ENGINES_FILE=$E2E_STATE_DIR/engines.env
E2E_LOG_DIR=${E2E_LOG_DIR:-/var/log/gpuslice-e2e}
# Runtime state: the spec directory Docker is configured to read in addition to /etc/cdi and
# /var/run/cdi (install-deps.sh puts it in daemon.json "cdi-spec-dirs"), and the run lock.
E2E_RUN_DIR=/run/gpuslice-e2e
E2E_DOCKER_CDI_DIR=$E2E_RUN_DIR/cdi
# podman gets its own storage so the tests never touch /var/lib/containers.
E2E_PODMAN_ROOT=$E2E_STATE_DIR/podman
E2E_PODMAN_RUNROOT=$E2E_RUN_DIR/podman
E2E_DOCKER_IMAGE=gpuslice-e2e/busybox:latest
E2E_MIN_DOCKER=26

E2E_GENERATOR=${E2E_GENERATOR:-$REPO_ROOT/target/release/gpuslice-cdi}
E2E_FAKEGPU_LIB=${E2E_FAKEGPU_LIB:-$REPO_ROOT/target/release/libfakegpu.so}
# The statically linked hook (`make hook`) and the interception library.
E2E_HOOK=${E2E_HOOK:-$REPO_ROOT/target/x86_64-unknown-linux-gnu/release/gpuslice-hook}
E2E_SHIM=${E2E_SHIM:-$REPO_ROOT/target/release/libgpuslice.so}
E2E_RUNTIME=${E2E_RUNTIME:-$REPO_ROOT/target/release/gpuslice-runtime}
# Docker's runtime "gpuslice" (install-deps.sh registers it): a wrapper that runs runc, which a
# runtime test points at $E2E_RUNTIME and its own config while it runs (test_runtime.sh).
E2E_RUNTIME_WRAPPER=$E2E_STATE_DIR/bin/gpuslice-runtime

# ---------------------------------------------------------------------------------------------
# Logging and polling

e2e_log() { printf '[e2e] %s\n' "$*" >&2; }

# wait_for SECONDS CMD...: run CMD until it succeeds or SECONDS have passed (status 1).
wait_for() {
    local limit=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - start < limit)) || return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# Test registry.
#
# A test is a shell function named test_* in a tests/e2e/test_*.sh file. run.sh runs each one
# in a subshell with `set -euo pipefail`, a fresh temp dir in $T and its own cleanup stack, and
# reads its outcome from the exit status: 0 passed, 77 skipped (reason from `skip`), anything
# else failed. Inside a test: `skip <reason>`, `fail <message>`, `pass` (optional, ends early).

E2E_SKIP_STATUS=77
E2E_PASSED=0
E2E_FAILED=0
E2E_SKIPPED=0

pass() { exit 0; }

fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

skip() {
    printf '%s\n' "$*" >"$E2E_SKIP_FILE"
    exit "$E2E_SKIP_STATUS"
}

# defer CMD...: run CMD when the current test ends, last registered first.
E2E_DEFERRED=()
defer() {
    local quoted
    printf -v quoted '%q ' "$@"
    E2E_DEFERRED=("$quoted" "${E2E_DEFERRED[@]}")
}

e2e_run_deferred() {
    local cmd
    for cmd in "${E2E_DEFERRED[@]}"; do
        eval "$cmd" >/dev/null 2>&1 || true
    done
    E2E_DEFERRED=()
}

# e2e_record NAME passed|failed|skipped [REASON]: count and print one outcome.
e2e_record() {
    local name=$1 outcome=$2 reason=${3:-}
    case $outcome in
        passed) E2E_PASSED=$((E2E_PASSED + 1)); printf '%s: passed\n' "$name" ;;
        failed) E2E_FAILED=$((E2E_FAILED + 1)); printf '%s: FAILED%s\n' "$name" "${reason:+ ($reason)}" ;;
        skipped)
            if [[ ${GPUSLICE_NO_SKIP:-} == 1 ]]; then
                # As root under `make test` (CI), a test that cannot run is a failure.
                e2e_record "$name" failed "cannot run here (${reason:-no reason given}), and GPUSLICE_NO_SKIP=1 says every test must run"
                return
            fi
            E2E_SKIPPED=$((E2E_SKIPPED + 1)); printf '%s: skipped: %s\n' "$name" "${reason:-no reason given}" ;;
    esac
}

# e2e_run_test FUNC WORKDIR: run one test function, print its outcome, keep its log.
e2e_run_test() {
    local fn=$1 work=$2 status log reason started
    mkdir -p "$work/tmp"
    log=$work/log
    started=$SECONDS
    (
        set -euo pipefail
        E2E_SKIP_FILE=$work/skip-reason
        E2E_TEST_NAME=$fn
        T=$work/tmp
        export T
        trap 'e2e_run_deferred' EXIT
        trap 'printf "error: %s (status %s) at %s:%s\n" "$BASH_COMMAND" "$?" "${BASH_SOURCE[0]##*/}" "$LINENO" >&2' ERR
        "$fn"
    ) >"$log" 2>&1 </dev/null
    status=$?
    if [[ $status -eq 0 ]]; then
        e2e_record "$fn" passed
    elif [[ $status -eq $E2E_SKIP_STATUS ]]; then
        reason=$(cat "$work/skip-reason" 2>/dev/null)
        e2e_record "$fn" skipped "$reason"
    else
        e2e_record "$fn" failed "exit $status after $((SECONDS - started))s, log $log"
        sed 's/^/    | /' "$log" | tail -n 60
        return 0
    fi
    [[ ${E2E_VERBOSE:-0} != 1 ]] || sed 's/^/    | /' "$log"
    return 0
}

# Prints the summary line; status 1 when any test failed.
e2e_summary() {
    printf 'e2e: %d passed, %d failed, %d skipped\n' "$E2E_PASSED" "$E2E_FAILED" "$E2E_SKIPPED"
    [[ $E2E_FAILED -eq 0 ]]
}

# ---------------------------------------------------------------------------------------------
# Assertions (they print what they compared, so a failed test's log says why)

# assert_line_in LINE TEXT WHAT: TEXT contains LINE as a whole line.
assert_line_in() {
    local line=$1 text=$2 what=${3:-output}
    grep -qxF -- "$line" <<<"$text" || fail "$what: no line '$line' in:"$'\n'"$text"
}

# ---------------------------------------------------------------------------------------------
# Requirements: each one either returns or skips the test with the reason.

require_root() {
    [[ $(id -u) -eq 0 ]] || skip "not root (the end-to-end tier runs containers as root)"
}

require_file() {
    local path=$1 what=${2:-}
    [[ -e $path ]] || skip "${path#"$REPO_ROOT"/} not built${what:+ ($what)}"
}

# A reason install-deps.sh recorded for an engine, if any.
e2e_recorded_reason() {
    local var=$1
    [[ -r $E2E_ENGINES_FILE ]] || return 0
    (
        # shellcheck disable=SC1090
        . "$E2E_ENGINES_FILE"
        printf '%s' "${!var:-}"
    )
}

static_busybox() {
    local bb
    for bb in /bin/busybox /usr/bin/busybox; do
        if [[ -x $bb ]] && ! ldd "$bb" >/dev/null 2>&1; then
            printf '%s\n' "$bb"
            return 0
        fi
    done
    return 1
}

require_busybox() {
    static_busybox >/dev/null ||
        skip "no static busybox (install busybox-static; tests/e2e/install-deps.sh does)"
}

require_podman() {
    require_root
    require_busybox
    local recorded
    recorded=$(e2e_recorded_reason E2E_PODMAN_SKIP)
    command -v podman >/dev/null || skip "podman not installed${recorded:+: $recorded}"
    command -v runc >/dev/null || skip "runc not installed${recorded:+: $recorded}"
}

# The docker client: the one packaged with the engine when there is one (a newer client that
# happens to be first in PATH works too, but keeping them matched avoids API surprises).
e2e_docker_bin() {
    if [[ -x /usr/bin/docker ]]; then printf '/usr/bin/docker\n'; else command -v docker || printf 'docker\n'; fi
}

e2e_docker() { "$(e2e_docker_bin)" "$@"; }

# Skips unless a Docker 26+ daemon answers and reads $E2E_DOCKER_CDI_DIR. The reason given is
# the one install-deps.sh recorded when there is one (why Docker could not be set up).
require_docker() {
    require_root
    require_busybox
    local recorded version dirs
    recorded=$(e2e_recorded_reason E2E_DOCKER_SKIP)
    command -v "$(e2e_docker_bin)" >/dev/null ||
        skip "${recorded:-no docker client (run tests/e2e/install-deps.sh)}"
    version=$(e2e_docker version --format '{{.Server.Version}}' 2>/dev/null) ||
        skip "${recorded:-no docker daemon answers (run tests/e2e/install-deps.sh)}"
    dpkg --compare-versions "$version" ge "$E2E_MIN_DOCKER" ||
        skip "${recorded:-docker $version is older than $E2E_MIN_DOCKER (no CDI)}"
    dirs=$(e2e_docker info --format '{{json .CDISpecDirs}}' 2>/dev/null)
    [[ $dirs == *"\"$E2E_DOCKER_CDI_DIR\""* ]] ||
        skip "${recorded:-docker daemon does not read $E2E_DOCKER_CDI_DIR (CDI spec dirs: ${dirs:-none}; run tests/e2e/install-deps.sh)}"
}

# ---------------------------------------------------------------------------------------------
# Fixtures

# make_busybox_rootfs DIR: a minimal root filesystem, static busybox plus its applet links.
make_busybox_rootfs() {
    local dir=$1 bb applet
    bb=$(static_busybox) || fail "no static busybox"
    mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,etc,tmp,run,root}
    chmod 1777 "$dir/tmp"
    cp "$bb" "$dir/bin/busybox"
    while read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        ln -sf /bin/busybox "$dir/$applet"
    done < <("$bb" --list-full)
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$dir/etc/passwd"
    printf 'root:x:0:\n' >"$dir/etc/group"
}

# docker_image_from_rootfs DIR TAG: import DIR as an image (nothing can be pulled here).
docker_image_from_rootfs() {
    local dir=$1 tag=$2
    tar -C "$dir" -c . | e2e_docker import --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
}

# e2e_busybox_image: the shared busybox image, imported once per daemon.
e2e_busybox_image() {
    if ! e2e_docker image inspect "$E2E_DOCKER_IMAGE" >/dev/null 2>&1; then
        local dir=$T/busybox-image-rootfs
        make_busybox_rootfs "$dir"
        docker_image_from_rootfs "$dir" "$E2E_DOCKER_IMAGE"
    fi
    printf '%s\n' "$E2E_DOCKER_IMAGE"
}

# A character-device major that the running kernel has not registered (for nvidia-uvm, whose
# real major is dynamic). Prefers 237.
unused_char_major() {
    local used major
    used=$(awk '/^Character devices:/ {c=1; next} /^$/ {c=0} c {print $1}' /proc/devices)
    for major in 237 $(seq 234 -1 200) $(seq 238 254); do
        grep -qx "$major" <<<"$used" || { printf '%s\n' "$major"; return 0; }
    done
    return 1
}

# make_devroot DIR: DIR/dev with the NVIDIA nodes of a two-GPU machine. Prints the uvm major.
make_devroot() {
    local root=$1 uvm
    uvm=$(unused_char_major) || fail "no unused character major for nvidia-uvm"
    grep -qE '^ *195 ' /proc/devices && e2e_log "warning: major 195 is registered on this host"
    mkdir -p "$root/dev"
    mknod -m 666 "$root/dev/nvidia0" c 195 0
    mknod -m 666 "$root/dev/nvidia1" c 195 1
    mknod -m 666 "$root/dev/nvidiactl" c 195 255
    mknod -m 666 "$root/dev/nvidia-uvm" c "$uvm" 0
    printf '%s\n' "$uvm"
}

# new_spec_dir: an empty CDI spec directory for this test (podman is pointed at it).
new_spec_dir() {
    local dir
    dir=$(mktemp -d "$T/cdi.XXXXXX")
    printf '%s\n' "$dir"
}

# install_docker_spec FILE: put FILE where the daemon reads specs, removed when the test ends.
install_docker_spec() {
    local src=$1 dst
    mkdir -p "$E2E_DOCKER_CDI_DIR"
    dst=$E2E_DOCKER_CDI_DIR/$E2E_TEST_NAME-$(basename "$src")
    install -m 0644 "$src" "$dst"
    defer rm -f "$dst"
}

# render_template SRC DST KEY=VALUE...: copy SRC replacing @KEY@ with VALUE.
render_template() {
    local src=$1 dst=$2 kv text
    shift 2
    text=$(<"$src")
    for kv in "$@"; do
        text=${text//@${kv%%=*}@/${kv#*=}}
    done
    [[ $text != *@[A-Z_]*@* ]] || fail "unreplaced placeholder in $src"
    printf '%s\n' "$text" >"$dst"
}

# ---------------------------------------------------------------------------------------------
# Engines

# podman with what this machine needs: runc (crun 1.8 refuses the hybrid cgroups here),
# cgroupfs (no systemd) and file events (fixtures/containers.conf, which replaces the host's
# containers.conf), its own vfs storage (--rootfs needs no layers), and the spec dir.
# podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi (no cdi_spec_dirs option), so
# it runs in a private mount namespace where SPECDIR is bound over /var/run/cdi and /etc/cdi is
# hidden; the host's spec dirs are never written to.
# Usage: e2e_podman SPECDIR podman-args...
e2e_podman() {
    local specdir=$1 empty=$T/cdi-hidden
    shift
    mkdir -p "$empty" /run/cdi
    # shellcheck disable=SC2016
    CONTAINERS_CONF=$E2E_DIR/fixtures/containers.conf unshare --mount --propagation private -- \
        bash -c '{ [ ! -d /etc/cdi ] || mount --bind "$1" /etc/cdi; } && mount --bind "$2" /run/cdi && shift 2 && exec "$@"' \
        e2e-podman "$empty" "$specdir" \
        podman --root "$E2E_PODMAN_ROOT/root" --runroot "$E2E_PODMAN_RUNROOT" --storage-driver vfs "$@"
}

E2E_ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

# podman_annotations: whether this podman loads CDI 0.6.0 specs (annotations); 4.3 does not.
podman_annotations() {
    local v
    v=$(podman version --format '{{.Client.Version}}' 2>/dev/null) || v=0
    if [[ $(printf '%s\n' "$v" 4.7.0 | sort -V | head -n1) == 4.7.0 ]]; then echo true; else echo false; fi
}

# What the slice checks run inside the container: every NVIDIA node with type and numbers,
# then the slice name. One line per node: "<path> <type> <major>:<minor>" (decimal).
# shellcheck disable=SC2016
E2E_PROBE='ls -l /dev/nvidia* >&2; for f in /dev/nvidia*; do [ -e "$f" ] || continue; t=$(stat -c %F "$f"); echo "$f ${t%% *} $((0x$(stat -c %t "$f"))):$((0x$(stat -c %T "$f")))"; done; echo "GPUSLICE_SLICE=$GPUSLICE_SLICE"'

# podman_slice SPECDIR ROOTFS DEVICE: run the probe with --device DEVICE, print its output.
# podman says only "unresolvable CDI devices" when it rejects a spec; the reason (an unknown
# field, an unsupported cdiVersion) is in its debug log, which a failure copies into the test log.
podman_slice() {
    local specdir=$1 rootfs=$2 device=$3 out
    local args=(run --rm --network none "${E2E_ULIMITS[@]}" --device "$device" --rootfs "$rootfs" sh -c "$E2E_PROBE")
    if ! out=$(e2e_podman "$specdir" "${args[@]}"); then
        e2e_podman "$specdir" --log-level debug "${args[@]}" 2>&1 | grep -i 'cdi' | sed 's/^/podman debug: /' >&2
        fail "podman run --device $device failed"
    fi
    printf '%s\n' "$out"
}

# docker_slice IMAGE DEVICE: the same through Docker (spec from install_docker_spec). The
# daemon notices spec files through inotify, asynchronously; while a just-written or just-removed
# file is not yet seen the device is "unresolvable" for a moment, so that answer is retried.
docker_slice() {
    local image=$1 device=$2 out status deadline=$((SECONDS + 10))
    while :; do
        status=0
        out=$(e2e_docker run --rm --network none --device "$device" "$image" sh -c "$E2E_PROBE" 2>"$T/docker-stderr") ||
            status=$?
        cat "$T/docker-stderr" >&2
        if ((status != 0)) && grep -q 'unresolvable CDI devices' "$T/docker-stderr" && ((SECONDS < deadline)); then
            sleep 0.2
            continue
        fi
        if ((status != 0)); then
            grep -i 'cdi' "$E2E_LOG_DIR/dockerd.log" 2>/dev/null | tail -n 5 | sed 's/^/dockerd log: /' >&2
            fail "docker run --device $device failed"
        fi
        printf '%s\n' "$out"
        return 0
    done
}

# assert_slice_view OUTPUT SLICE MINOR: the container saw /dev/nvidia<MINOR> (c 195:MINOR) and
# no other GPU node, and GPUSLICE_SLICE=SLICE.
assert_slice_view() {
    local out=$1 slice=$2 minor=$3 others
    printf '%s\n' "$out"
    assert_line_in "/dev/nvidia$minor character 195:$minor" "$out" "$slice device node"
    others=$(grep -E '^/dev/nvidia[0-9]+ ' <<<"$out" | grep -vF "/dev/nvidia$minor " || true)
    [[ -z $others ]] || fail "$slice must see only GPU $minor, also got: $others"
    assert_line_in "GPUSLICE_SLICE=$slice" "$out" "$slice environment"
}

# Fixtures of the hook's tests: simulated driver root, glibc images, cuda-probe, runc bundles,
# hostile images.
# shellcheck source=tests/e2e/lib_slice.sh
. "$E2E_DIR/lib_slice.sh"
