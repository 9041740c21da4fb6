#!/usr/bin/env bash
# The cudart tier: NVIDIA's CUDA runtime (libcudart from PyPI's wheels, pinned in
# runtimes.txt), CuPy and PyTorch (frameworks.txt) running unmodified on the simulated GPU, without and
# with gpuslice's shim, outside and inside containers. Every test_* function of
# tests/cudart/test_*.sh runs once per runtime (a framework's once per line of frameworks.txt
# its file selects).
#
#   tests/cudart/run.sh [--install] [--keep] [--list] [-v] [PATTERN...]
#
#   --install  download and unpack the runtimes, install the frameworks into the cache first
#              (tests/cudart/install.sh)
#   --keep     keep the work directory even when everything passed
#   --list     print the test names and exit
#   -v         print every test's log, not only the failed ones'
#   PATTERN    run only tests whose name (e.g. test_kernels[13.0.96]) matches one of these
#              extended regexes
#
# Prints one line per test ("<name>[<runtime>]: passed", "…: FAILED (…)" with its log,
# "…: skipped: <reason>", or "…: known failure: <reason>" for a bug owned by another part of
# the project), then "cudart: N passed, N failed, N skipped". Exit status 1 when any test
# failed. Needs `make release` (the simulated GPU, the shim, gpuslice-cdi, the static hook),
# gcc, and for the slice and container tests root, unshare(1) and Docker as the end-to-end
# tier sets it up (tests/e2e/install-deps.sh).
set -uo pipefail

# shellcheck source=tests/cudart/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install=0 keep=0 list=0 patterns=()
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        --keep) keep=1 ;;
        --list) list=1 ;;
        -v) E2E_VERBOSE=1 ;;
        -h | --help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) printf 'run.sh: unknown option %s\n' "$arg" >&2; exit 2 ;;
        *) patterns+=("$arg") ;;
    esac
done

mapfile -t runtimes < <(cudart_runtimes)
# The simulator alone first, then slices, then containers; any other file after them. A file
# test_<stem>.sh whose tests run for other things than the runtimes (frameworks) defines
# <stem>_variants, printing their names.
files=("$CUDART_DIR"/test_runtime.sh "$CUDART_DIR"/test_slice.sh "$CUDART_DIR"/test_docker.sh)
for file in "$CUDART_DIR"/test_*.sh; do
    [[ " ${files[*]} " == *" $file "* ]] || files+=("$file")
done
tests=()
for file in "${files[@]}"; do
    # shellcheck disable=SC1090
    . "$file"
    stem=$(basename "$file" .sh)
    variants=("${runtimes[@]}")
    if declare -F "${stem#test_}_variants" >/dev/null; then
        mapfile -t variants < <("${stem#test_}_variants")
    fi
    while read -r fn; do
        for rt in "${variants[@]}"; do
            name="${fn}[$rt]"
            if ((${#patterns[@]})); then
                matched=0
                for p in "${patterns[@]}"; do [[ $name =~ $p ]] && matched=1; done
                ((matched)) || continue
            fi
            tests+=("$name")
        done
    done < <(grep -oE '^test_[A-Za-z0-9_]+ *\(\)' "$file" | tr -d '() ')
done

if ((list)); then
    printf '%s\n' "${tests[@]}"
    exit 0
fi

started=$SECONDS
if ((install)); then
    "$CUDART_DIR/install.sh" || e2e_log "install.sh failed; the runtimes it could not install are skipped"
    printf '(install: %ds)\n' "$((SECONDS - started))"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpuslice-cudart.XXXXXX")
started=$SECONDS
declare -A built=()
for name in "${tests[@]}"; do
    fn=${name%%\[*}
    rt=${name#*\[}
    rt=${rt%\]}
    if [[ " ${runtimes[*]} " != *" $rt "* ]]; then
        # A framework: its tests check their own installation.
        RT=$rt cudart_run_test "$name" "$fn" "$work/$fn-$rt"
        continue
    fi
    if [[ -z ${built[$rt]:-} ]]; then
        built[$rt]=missing
        if ! cudart_installed "$rt"; then
            built[$rt]="runtime $rt is not installed in $CUDART_CACHE (run with --install)"
        elif ! command -v gcc >/dev/null; then
            built[$rt]="no gcc to build cudart-check"
        elif cudart_build "$rt" "$work/bin/$rt" >"$work/build-$rt.log" 2>&1; then
            built[$rt]=ok
        else
            built[$rt]="building cudart-check against $rt failed: $(tail -n 3 "$work/build-$rt.log")"
        fi
    fi
    if [[ ${built[$rt]} != ok ]]; then
        e2e_record "$name" skipped "${built[$rt]}"
        continue
    fi
    RT=$rt CHECK=$work/bin/$rt/cudart-check CHECK_PTDS=$work/bin/$rt/cudart-check-ptds \
        cudart_run_test "$name" "$fn" "$work/$fn-$rt"
done
printf '(%d tests in %ds)\n' "${#tests[@]}" "$((SECONDS - started))"

if ((keep || E2E_FAILED)); then
    e2e_log "work directory kept: $work"
else
    rm -rf "$work"
fi
cudart_summary
