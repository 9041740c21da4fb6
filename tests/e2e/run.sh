#!/usr/bin/env bash
# Runs the end-to-end tier: every test_* function in tests/e2e/test_*.sh, in file order.
#
#   tests/e2e/run.sh [--install] [--keep] [--list] [-v] [PATTERN...]
#
#   --install  run tests/e2e/install-deps.sh first (installs and starts the engines)
#   --keep     keep the work directory (dev roots, specs, logs) even when everything passed
#   --list     print the test names and exit
#   -v         print every test's log, not only the failed ones'
#   PATTERN    run only tests whose name matches one of these extended regexes
#
# Prints one line per test ("<name>: passed", "<name>: FAILED (...)" with its log, or
# "<name>: skipped: <reason>"), then "e2e: N passed, N failed, N skipped". Exit status 1 when
# any test failed; skips do not fail the run. Must run as root; otherwise every test is skipped.
set -uo pipefail

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install=0 keep=0 list=0 patterns=()
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        --keep) keep=1 ;;
        --list) list=1 ;;
        -v) E2E_VERBOSE=1 ;;
        -h | --help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) printf 'run.sh: unknown option %s\n' "$arg" >&2; exit 2 ;;
        *) patterns+=("$arg") ;;
    esac
done

tests=()
for file in "$E2E_DIR"/test_*.sh; do
    # shellcheck disable=SC1090
    . "$file"
    while read -r fn; do
        if ((${#patterns[@]})); then
            matched=0
            for p in "${patterns[@]}"; do [[ $fn =~ $p ]] && matched=1; done
            ((matched)) || continue
        fi
        tests+=("$fn")
    done < <(grep -oE '^test_[A-Za-z0-9_]+ *\(\)' "$file" | tr -d '() ')
done

if ((list)); then
    printf '%s\n' "${tests[@]}"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    for fn in "${tests[@]}"; do e2e_record "$fn" skipped "not root (the end-to-end tier runs containers as root)"; done
    e2e_summary
    exit
fi

if ((install)); then
    "$E2E_DIR/install-deps.sh" || e2e_log "install-deps.sh failed; tests will skip what is missing"
fi

# One run at a time: the runs share Docker's spec dir and podman's storage.
mkdir -p "$E2E_RUN_DIR"
exec 9>"$E2E_RUN_DIR/lock"
flock -w 600 9 || { e2e_log "another run holds $E2E_RUN_DIR/lock"; exit 1; }
# The directory is the tests' own; specs a killed run left behind would shadow or conflict
# with this run's, and none should outlive the run.
clear_docker_specs() { rm -f "$E2E_DOCKER_CDI_DIR"/*.yaml "$E2E_DOCKER_CDI_DIR"/*.json; }
clear_docker_specs
trap clear_docker_specs EXIT

work=$(mktemp -d "${TMPDIR:-/tmp}/gpuslice-e2e.XXXXXX")
started=$SECONDS
for fn in "${tests[@]}"; do
    e2e_run_test "$fn" "$work/$fn"
done
printf '(%d tests in %ds)\n' "${#tests[@]}" "$((SECONDS - started))"

if ((keep || E2E_FAILED)); then
    e2e_log "work directory kept: $work"
else
    rm -rf "$work"
fi
e2e_summary
