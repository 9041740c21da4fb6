#!/usr/bin/env bash
# Installs the cudart tier's runtimes (tests/cudart/runtimes.txt) and Python frameworks
# (tests/cudart/frameworks.txt) into its cache: the pinned wheels are downloaded from PyPI with
# `pip download --no-deps` into $CUDART_CACHE/wheels; a runtime's are unpacked (headers and
# libraries only) into $CUDART_CACHE/<name>, a framework's installed (`pip install --no-deps
# --no-index`) into a virtual environment $CUDART_CACHE/<name>. As root, also the root
# filesystem of the Python container images (Debian bookworm with python3, made by
# debootstrap, which is installed with apt when missing) as $CUDART_CACHE/rootfs/$ROOTFS_NAME.tar.
# Nothing else is installed system-wide. Idempotent: what matches its manifest line is left
# alone, and a wheel already in the cache is not fetched again.
#
#   tests/cudart/install.sh [NAME...]      default: everything in both manifests, and the rootfs
#                                          (NAME "rootfs")
#
# Needs python3 with pip and venv, and unzip. Prints one line per runtime and framework; exit
# status 1 if any failed.
set -uo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
CACHE=${CUDART_CACHE:-/var/cache/gpuslice-cudart}
MANIFEST=$DIR/runtimes.txt
FRAMEWORKS=$DIR/frameworks.txt

log() { printf 'cudart install: %s\n' "$*"; }

# The container images' root filesystem: what debootstrap makes of these, recorded beside the
# tar; a different line makes it again.
ROOTFS_NAME=bookworm-python3
ROOTFS_LINE="debootstrap --variant=minbase --include=python3 bookworm http://deb.debian.org/debian"

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

# fetch SPEC [PIP-DOWNLOAD-OPTIONS...]: the wheel for SPEC in $CACHE/wheels, downloaded if
# missing; prints its path.
fetch() {
    local spec=$1 file
    shift
    file=$(wheel_file "$spec")
    if [[ -z $file ]]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" --dest "$CACHE/wheels" "$spec" >&2 ||
            return 1
        file=$(wheel_file "$spec")
    fi
    [[ -n $file ]] && printf '%s\n' "$file"
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
        # Runtime wheels are for any Python (py3-none), so the tag is given, not this host's.
        if ! file=$(fetch "$spec" --platform manylinux2014_x86_64 --python-version 3.11); then
            log "$name: pip download $spec failed"
            ok=0
            break
        fi
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

while read -r name runtime specs; do
    [[ -z $name || $name == \#* ]] && continue
    if (($#)) && [[ " $* " != *" $name "* ]]; then continue; fi
    read -ra specs <<<"$specs"
    line="$name $runtime ${specs[*]} $(python3 -c 'import sys; print(sys.version.split()[0])')"
    dest=$CACHE/$name
    if [[ -f $dest/.installed && $(<"$dest/.installed") == "$line" ]]; then
        log "$name: already installed in $dest"
        continue
    fi
    started=$SECONDS
    ok=1
    files=()
    for spec in "${specs[@]}"; do
        # Framework wheels are built per Python: this host's python3 chooses.
        if ! file=$(fetch "$spec"); then
            log "$name: pip download $spec failed"
            ok=0
            break
        fi
        files+=("$file")
    done
    rm -rf "$dest.tmp"
    # The environment is moved into place afterwards: its python works there (pyvenv.cfg is
    # found next to it), its pip's shebang does not, and is not used again.
    if ((ok)) && python3 -m venv "$dest.tmp" >/dev/null &&
        "$dest.tmp/bin/python" -m pip install --quiet --no-deps --no-index "${files[@]}"; then
        printf '%s\n' "$line" >"$dest.tmp/.installed"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
        log "$name: installed in $dest ($((SECONDS - started)) s)"
    else
        ((ok)) && log "$name: installing into a virtual environment failed"
        rm -rf "$dest.tmp"
        status=1
    fi
done <"$FRAMEWORKS"

# install_rootfs: $CACHE/rootfs/$ROOTFS_NAME.tar, made by debootstrap as root.
install_rootfs() {
    local tar=$CACHE/rootfs/$ROOTFS_NAME.tar started=$SECONDS tmp
    if [[ -f $tar && -f $tar.installed && $(<"$tar.installed") == "$ROOTFS_LINE" ]]; then
        log "rootfs: already made in $tar"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "rootfs: not made (debootstrap needs root); the container tests of Python frameworks skip"
        return 0
    fi
    if ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null 2>&1; } ||
            { log "rootfs: apt-get install debootstrap failed"; return 1; }
    fi
    mkdir -p "$CACHE/rootfs"
    tmp=$(mktemp -d "$CACHE/rootfs/.make.XXXXXX")
    read -ra cmd <<<"$ROOTFS_LINE"
    if ! "${cmd[0]}" "${cmd[@]:1:3}" "$tmp/root" "${cmd[@]:4}" >"$tmp/log" 2>&1; then
        log "rootfs: debootstrap failed: $(tail -n 1 "$tmp/log")"
        rm -rf "$tmp"
        return 1
    fi
    # The packages it downloaded are not part of the system.
    rm -f "$tmp/root/var/cache/apt/archives/"*.deb
    tar -C "$tmp/root" -cf "$tmp/rootfs.tar" . && mv "$tmp/rootfs.tar" "$tar" && printf '%s\n' "$ROOTFS_LINE" >"$tar.installed"
    rm -rf "$tmp"
    log "rootfs: made $tar ($((SECONDS - started)) s, $(du -h "$tar" | cut -f1))"
}

if ! (($#)) || [[ " $* " == *" rootfs "* ]]; then
    install_rootfs || status=1
fi
exit "$status"
