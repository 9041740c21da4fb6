#!/usr/bin/env bash
# Installs the cudart tier's runtimes (tests/cudart/runtimes.txt) into its cache: the pinned
# wheels downloaded from PyPI with `pip download --no-deps` into $CUDART_CACHE/wheels, then
# unpacked (headers and libraries only) into $CUDART_CACHE/<name>. Nothing is installed
# system-wide and no pip package is installed. Idempotent: a runtime whose unpacked tree
# matches its manifest line is left alone, and a wheel already in the cache is not fetched
# again.
#
#   tests/cudart/install.sh [NAME...]      default: every runtime of the manifest
#
# Needs python3 with pip and unzip. Prints one line per runtime; exit status 1 if any failed.
set -uo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
CACHE=${CUDART_CACHE:-/var/cache/gpuslice-cudart}
MANIFEST=$DIR/runtimes.txt

log() { printf 'cudart install: %s\n' "$*"; }

for tool in unzip python3; do
    command -v "$tool" >/dev/null || { log "$tool is missing"; exit 1; }
done
python3 -m pip --version >/dev/null 2>&1 || { log "python3 has no pip"; exit 1; }
mkdir -p "$CACHE/wheels" || exit 1

# wheel_file SPEC: the cached wheel for name==version, if any.
wheel_file() {
    local name=${1%%==*} version=${1#*==}
    compgen -G "$CACHE/wheels/${name//-/_}-${version}-*.whl" | head -n1
}

status=0
while read -r name lib includes wheels; do
    [[ -z $name || $name == \#* ]] && continue
    if (($#)) && [[ " $* " != *" $name "* ]]; then continue; fi
    read -ra wheels <<<"$wheels"
    line="$name $lib $includes ${wheels[*]}"
    dest=$CACHE/$name
    if [[ -f $dest/.installed && $(<"$dest/.installed") == "$line" ]]; then
        log "$name: already installed in $dest"
        continue
    fi
    started=$SECONDS
    ok=1
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    for spec in "${wheels[@]}"; do
        file=$(wheel_file "$spec")
        if [[ -z $file ]]; then
            if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
                --python-version 3.11 --dest "$CACHE/wheels" "$spec"; then
                log "$name: pip download $spec failed"
                ok=0
                break
            fi
            file=$(wheel_file "$spec")
        fi
        [[ -n $file ]] || { log "$name: no wheel for $spec after downloading"; ok=0; break; }
        # Headers and libraries only (the nvcc wheel's compiler is not needed). Status 11 is
        # "a pattern matched nothing" (the crt wheels have no lib/).
        unzip -q -o "$file" 'nvidia/*/include/*' 'nvidia/*/lib/*' -d "$dest.tmp" >/dev/null 2>&1
        rc=$?
        if ((rc != 0 && rc != 11)); then
            log "$name: unpacking $(basename "$file") failed (unzip status $rc)"
            ok=0
            break
        fi
    done
    if ((ok)) && [[ -f $dest.tmp/$lib ]]; then
        printf '%s\n' "$line" >"$dest.tmp/.installed"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
        log "$name: installed in $dest ($((SECONDS - started)) s)"
    else
        ((ok)) && log "$name: $lib is not in its wheels"
        rm -rf "$dest.tmp"
        status=1
    fi
done <"$MANIFEST"
exit "$status"
