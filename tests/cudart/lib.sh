# shellcheck shell=bash disable=SC2031
# (SC2031: T is set for each test, in the subshell that runs it: cudart_run_test.)
# The cudart tier's helpers, sourced by run.sh (definitions only). It builds on the end-to-end
# tier's library (tests/e2e/lib.sh: the test registry's fail/skip/defer, fixtures, Docker):
#   cudart_runtimes                      the runtimes of runtimes.txt, one name per line
#   cudart_build NAME DIR                cudart-check built against runtime NAME into DIR
#   cudart_bare ARGS...                  $CHECK ARGS on the simulated GPU alone (no shim)
#   cudart_node                          a node with gpuslice set up: two 80 GiB GPUs, four 40 GiB slices
#   cudart_in_slice SLICE ARGS...        $CHECK ARGS in SLICE, shim preloaded, slice state
#                                        mounted as the hook mounts it in a container
#   kv KEY OUTPUT                        the value of KEY=… in a program's output
#   known_failure REASON                 this test is expected to fail (a bug owned elsewhere)
#   require_framework                    skip unless framework $RT is installed; PROG is its python
# Tests are functions test_* in tests/cudart/test_*.sh; run.sh runs each once per runtime,
# with RT (the runtime's name), CHECK and CHECK_PTDS (the two builds of cudart-check) set, or,
# in a file test_<stem>.sh defining <stem>_variants, once per variant it names (RT set).

CUDART_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$CUDART_DIR/../e2e/lib.sh"

CUDART_CACHE=${CUDART_CACHE:-/var/cache/gpuslice-cudart}
CUDART_MANIFEST=$CUDART_DIR/runtimes.txt
CUDART_FRAMEWORKS=$CUDART_DIR/frameworks.txt
CUDART_FAKEGPU_TOML=$E2E_FAKEGPU_TOML
# The release builds, as the end-to-end tier uses them.
CUDART_SHIM=$E2E_SHIM
CUDART_FAKEGPU_LIB=$E2E_FAKEGPU_LIB
CUDART_GENERATOR=$E2E_GENERATOR
# The simulated GPU's memory, a slice of it (split_count = 2) and what a context takes: what
# the test files compare with.
# shellcheck disable=SC2034
CUDART_GPU_BYTES=85899345920
# shellcheck disable=SC2034
CUDART_SLICE_BYTES=42949672960
# shellcheck disable=SC2034
CUDART_CONTEXT_BYTES=268435456

# ---------------------------------------------------------------------------------------------
# Runtimes

cudart_runtimes() {
    awk '!/^[[:space:]]*(#|$)/ {print $1}' "$CUDART_MANIFEST"
}

# cudart_field NAME N: field N (2: libcudart, 3: include dirs) of runtime NAME's line.
cudart_field() {
    awk -v n="$1" -v f="$2" '$1 == n {print $f}' "$CUDART_MANIFEST"
}

# cudart_installed NAME: the unpacked runtime matches its manifest line.
cudart_installed() {
    local line
    line=$(awk -v n="$1" '$1 == n {$1 = $1; print}' "$CUDART_MANIFEST")
    [[ -f $CUDART_CACHE/$1/.installed && $(<"$CUDART_CACHE/$1/.installed") == "$line" ]]
}

# cudart_build NAME DIR: DIR/cudart-check and DIR/cudart-check-ptds (built with
# -DCUDA_API_PER_THREAD_DEFAULT_STREAM) compiled with gcc against runtime NAME's headers, and
# its libcudart beside them (the programs find it through an $ORIGIN rpath, in a container
# too).
cudart_build() {
    local name=$1 dir=$2 root lib inc flags=()
    root=$CUDART_CACHE/$name
    lib=$root/$(cudart_field "$name" 2)
    IFS=: read -ra inc <<<"$(cudart_field "$name" 3)"
    for d in "${inc[@]}"; do flags+=(-I "$root/$d"); done
    mkdir -p "$dir"
    cp "$lib" "$dir/"
    # '$ORIGIN' is for the loader, not the shell.
    # shellcheck disable=SC2016
    local cc=(gcc -std=c11 -O2 -Wall -Wextra -Werror "${flags[@]}" "$CUDART_DIR/cudart-check.c"
        "$dir/$(basename "$lib")" -Xlinker -rpath -Xlinker '$ORIGIN')
    "${cc[@]}" -o "$dir/cudart-check" && "${cc[@]}" -DCUDA_API_PER_THREAD_DEFAULT_STREAM -o "$dir/cudart-check-ptds"
}

# The frameworks of frameworks.txt, one name per line.
cudart_frameworks() {
    awk '!/^[[:space:]]*(#|$)/ {print $1}' "$CUDART_FRAMEWORKS"
}

# require_framework: skips unless framework $RT (a test's variant) and its runtime are installed;
# sets PROG to its environment's python and CUDART_LIBS to its runtime's library directory.
require_framework() {
    local line runtime
    line=$(awk -v n="$RT" '$1 == n {$1 = $1; print}' "$CUDART_FRAMEWORKS")
    [[ -f $CUDART_CACHE/$RT/.installed && $(<"$CUDART_CACHE/$RT/.installed") == "$line "* ]] ||
        skip "$RT is not installed in $CUDART_CACHE (run with --install)"
    runtime=$(awk -v n="$RT" '$1 == n {print $2}' "$CUDART_FRAMEWORKS")
    cudart_installed "$runtime" || skip "runtime $runtime is not installed in $CUDART_CACHE (run with --install)"
    PROG=$CUDART_CACHE/$RT/bin/python
    CUDART_LIBS=$CUDART_CACHE/$runtime/$(dirname "$(cudart_field "$runtime" 2)")
}

# ---------------------------------------------------------------------------------------------
# The simulated GPU, with and without a slice

# The simulated driver in $T/driver (libcuda.so.1, libnvidia-ml.so.1), its state in
# $T/fakegpu-state: every process of one test sees the same GPUs.
cudart_driver() {
    if [[ ! -d $T/driver ]]; then
        mkdir -p "$T/driver" "$T/fakegpu-state"
        ln -s "$CUDART_FAKEGPU_LIB" "$T/driver/libcuda.so.1"
        ln -s "$CUDART_FAKEGPU_LIB" "$T/driver/libnvidia-ml.so.1"
    fi
}

cudart_env() {
    cudart_driver
    env -u GPUSLICE_MEMORY_LIMIT -u GPUSLICE_LOG -u LD_PRELOAD FAKEGPU_CONFIG="$CUDART_FAKEGPU_TOML" \
        FAKEGPU_STATE_DIR="$T/fakegpu-state" LD_LIBRARY_PATH="$T/driver${CUDART_LIBS:+:$CUDART_LIBS}" "$@"
}

# cudart_bare ARGS...: $CHECK (or $PROG when set) on the simulated GPU, no shim. Prints its
# output (stderr too); returns its status.
cudart_bare() {
    cudart_env "${PROG:-$CHECK}" "$@" 2>&1
}

# cudart_node: gpuslice-cdi generate for the simulated node (two 80 GiB GPUs, split_count = 2:
# slice0 and slice1 on GPU 0, slice2 and slice3 on GPU 1), writing the slices' limits,
# regions and the GPUs' boards in $T/state, as on a host. Device nodes under $T/devroot.
cudart_node() {
    [[ $(id -u) -eq 0 ]] || skip "not root (a slice's state is bind-mounted read-only in a private mount namespace)"
    require_file "$CUDART_GENERATOR" "make release"
    require_file "$CUDART_SHIM" "make release"
    [[ -x /usr/bin/unshare ]] || skip "no unshare(1)"
    mkdir -p "$T/state" "$T/view/slices" "$T/view/gpus" "$T/cdi"
    make_devroot "$T/devroot" >/dev/null
    render_template "$E2E_DIR/fixtures/gpuslice.toml" "$T/gpuslice.toml" \
        SPEC_DIR="$T/cdi" STATE_DIR="$T/state" HOOK_PATH=/bin/true SHIM_PATH="$CUDART_SHIM" \
        DRIVER_ROOT=/ ANNOTATIONS=true
    FAKEGPU_CONFIG=$CUDART_FAKEGPU_TOML "$CUDART_GENERATOR" generate --config "$T/gpuslice.toml" \
        --nvml-lib "$CUDART_FAKEGPU_LIB" --dev-root "$T/devroot" --state-dir "$T/state" \
        --output "$T/cdi/gpuslice.yaml" >&2 || fail "gpuslice-cdi generate failed"
}

# cudart_in_slice SLICE ARGS...: $CHECK (or $PROG) ARGS in a private mount namespace where
# $T/view is what the hook makes of /run/gpuslice in a container: the slice's directory a
# read-only bind of the host's, its region a read-write bind, the GPUs' boards; with
# GPUSLICE_STATE_DIR=$T/view and the shim preloaded. Prints the output; returns its status.
cudart_in_slice() {
    local slice=$1 script board uuid
    shift
    script='set -e'$'\n'
    for board in "$T"/state/gpus/*/board; do
        uuid=$(basename "$(dirname "$board")")
        mkdir -p "$T/view/gpus/$uuid"
        : >"$T/view/gpus/$uuid/board"
        script+="mount --bind '$board' '$T/view/gpus/$uuid/board'"$'\n'
    done
    mkdir -p "$T/view/slices/$slice"
    script+="mount --bind '$T/state/slices/$slice' '$T/view/slices/$slice'
mount -o remount,bind,ro '$T/view/slices/$slice'
mount --bind '$T/state/slices/$slice/region' '$T/view/slices/$slice/region'
exec \"\$@\""
    cudart_env GPUSLICE_STATE_DIR="$T/view" LD_PRELOAD="$CUDART_SHIM" \
        unshare --mount --propagation private -- sh -c "$script" sh "${PROG:-$CHECK}" "$@" 2>&1
}

# ---------------------------------------------------------------------------------------------
# Reading results

# kv KEY OUTPUT: the value of the first KEY=… line (empty when there is none).
kv() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

# run_ok WHAT OUTPUT-VARIABLE CMD...: run CMD, keep its output in OUTPUT-VARIABLE, print it to
# the log, fail with WHAT when it fails.
run_ok() {
    local _what=$1 _var=$2 _out _status=0
    shift 2
    _out=$("$@") || _status=$?
    printf '%s\n' "$_out"
    ((_status == 0)) || fail "$_what: exit status $_status"
    printf -v "$_var" '%s' "$_out"
}

# assert_eq WHAT GOT WANT
assert_eq() { [[ $2 == "$3" ]] || fail "$1: got '${2}', want '$3'"; }

# assert_between WHAT GOT LOW HIGH: LOW <= GOT <= HIGH (numbers, decimals allowed).
assert_between() {
    awk -v g="$2" -v lo="$3" -v hi="$4" 'BEGIN { exit !(g != "" && g + 0 >= lo && g + 0 <= hi) }' ||
        fail "$1: got '${2}', want between $3 and $4"
}

# known_failure REASON: the test shows a bug that another part of the project owns and has not
# fixed yet. It still runs: its failure is counted as a known failure (not a failed run), and
# if it passes the run fails, so that the mark is removed.
known_failure() { printf '%s\n' "$*" >"$CUDART_KNOWN_FILE"; }

# ---------------------------------------------------------------------------------------------
# Running tests (as tests/e2e's registry, with one run per runtime and known failures)

CUDART_KNOWN=0

# cudart_run_test NAME FUNC WORKDIR: run FUNC as test NAME, print its outcome, keep its log.
cudart_run_test() {
    local name=$1 fn=$2 work=$3 status log reason started
    mkdir -p "$work/tmp"
    log=$work/log
    started=$SECONDS
    (
        set -euo pipefail
        E2E_SKIP_FILE=$work/skip-reason
        CUDART_KNOWN_FILE=$work/known-failure
        E2E_TEST_NAME=$fn
        T=$work/tmp
        export T
        trap 'e2e_run_deferred' EXIT
        trap 'printf "error: %s (status %s) at %s:%s\n" "$BASH_COMMAND" "$?" "${BASH_SOURCE[0]##*/}" "$LINENO" >&2' ERR
        "$fn"
    ) >"$log" 2>&1 </dev/null
    status=$?
    reason=$(cat "$work/known-failure" 2>/dev/null)
    if [[ -n $reason ]]; then
        if [[ $status -eq 0 ]]; then
            e2e_record "$name" failed "passed, but marked as a known failure ($reason): remove the mark"
        elif [[ $status -eq $E2E_SKIP_STATUS ]]; then
            e2e_record "$name" skipped "$(cat "$work/skip-reason" 2>/dev/null)"
        else
            CUDART_KNOWN=$((CUDART_KNOWN + 1))
            printf '%s: known failure: %s\n' "$name" "$reason"
            grep -E '^(FAIL|error):' "$log" | head -n 3 | sed 's/^/    | /'
            [[ ${E2E_VERBOSE:-0} != 1 ]] || sed 's/^/    | /' "$log"
        fi
        return 0
    fi
    if [[ $status -eq 0 ]]; then
        e2e_record "$name" passed
    elif [[ $status -eq $E2E_SKIP_STATUS ]]; then
        e2e_record "$name" skipped "$(cat "$work/skip-reason" 2>/dev/null)"
    else
        e2e_record "$name" failed "exit $status after $((SECONDS - started))s, log $log"
        sed 's/^/    | /' "$log" | tail -n 40
        return 0
    fi
    [[ ${E2E_VERBOSE:-0} != 1 ]] || sed 's/^/    | /' "$log"
    return 0
}

cudart_summary() {
    printf 'cudart: %d passed, %d failed, %d skipped%s\n' "$E2E_PASSED" "$E2E_FAILED" "$E2E_SKIPPED" \
        "$( ((CUDART_KNOWN)) && printf ', %d known failures' "$CUDART_KNOWN")"
    [[ $E2E_FAILED -eq 0 ]]
}
