#!/usr/bin/env bash
# Regenerates the crate gpuslice-cuda-abi (cuda-abi/) from NVIDIA's own headers:
#   cuda.h + cudaTypedefs.h (and the interop headers cudaGL.h, cudaGLTypedefs.h, cudaVDPAU.h,
#   cudaVDPAUTypedefs.h) of nvidia-cuda-runtime-cu12 12.9.79 and nvidia-cuda-runtime 13.5.37,
#   nvml.h of nvidia-nvml-dev-cu12 12.9.79 (PyPI wheels).
# The wheels are downloaded with pip into $WHEELS (default /var/cache/gpuslice-wheels), reusing
# what is there, and unpacked into a temporary directory; scripts/gen-cuda-abi.py reads them
# with libclang (through bindgen for the Rust types), derives the cuGetProcAddress table and
# writes cuda-abi/src/{cuda,nvml,table}.rs and cuda-abi/include/gpuslice_cuda_abi.h. Nothing is
# downloaded or generated at build time: commit what this writes.
#
# Needs: bindgen (cargo install bindgen-cli), libclang (Debian: libclang-dev), Python 3 with
# libclang's bindings (Debian: python3-clang-14, or PYTHON pointing at one), rustfmt, cc, pip.
#
# For a new CUDA release: change the versions below, run it, read the counts it prints, run
# `cargo test -p gpuslice-cuda-abi` and commit.
set -euo pipefail

CUDA12=12.9.79
CUDA13=13.5.37
NVML=12.9.79
WHEELS=${WHEELS:-/var/cache/gpuslice-wheels}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
    echo "gen-cuda-abi: $*" >&2
    exit 1
}

# --- tools ------------------------------------------------------------------------------
BINDGEN=${BINDGEN:-$(command -v bindgen || echo "$HOME/.cargo/bin/bindgen")}
[ -x "$BINDGEN" ] || die "no bindgen: cargo install bindgen-cli"
LIBCLANG=${LIBCLANG:-}
if [ -z "$LIBCLANG" ]; then
    for f in /usr/lib/llvm-*/lib/libclang.so.1 /usr/lib/x86_64-linux-gnu/libclang-*.so.1; do
        [ -e "$f" ] && LIBCLANG=$f
    done
fi
[ -n "$LIBCLANG" ] && [ -e "$LIBCLANG" ] || die "no libclang: apt-get install libclang-dev (or set LIBCLANG)"
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import clang.cindex' 2>/dev/null; then
            PYTHON=$p
            break
        fi
    done
fi
[ -n "$PYTHON" ] || die "no Python with libclang's bindings: apt-get install python3-clang-14 (or set PYTHON)"
command -v rustfmt >/dev/null || die "no rustfmt"

# --- wheels -----------------------------------------------------------------------------
# wheel NAME VERSION: the path of the cached wheel, downloaded first if missing.
wheel() {
    local file=${1//-/_}-$2-
    local found
    found=$(find "$WHEELS" -maxdepth 1 -name "${file}*.whl" 2>/dev/null | head -n1)
    if [ -z "$found" ]; then
        mkdir -p "$WHEELS"
        local pip=(python3 -m pip)
        "${pip[@]}" --version >/dev/null 2>&1 || pip=("$PYTHON" -m pip)
        "${pip[@]}" download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
            --dest "$WHEELS" "$1==$2" >&2 || die "downloading $1 $2 failed"
        found=$(find "$WHEELS" -maxdepth 1 -name "${file}*.whl" | head -n1)
        [ -n "$found" ] || die "pip did not leave a $1 $2 wheel in $WHEELS"
    fi
    echo "$found"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gen-cuda-abi.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# unpack WHEEL DIR HEADER: unpacks and prints the directory holding HEADER.
unpack() {
    mkdir -p "$2"
    "$PYTHON" -m zipfile -e "$1" "$2"
    local h
    h=$(find "$2" -name "$3" -path '*/include/*' | head -n1)
    [ -n "$h" ] || die "no $3 in $1"
    dirname "$h"
}

inc12=$(unpack "$(wheel nvidia-cuda-runtime-cu12 "$CUDA12")" "$tmp/cuda12" cudaTypedefs.h)
inc13=$(unpack "$(wheel nvidia-cuda-runtime "$CUDA13")" "$tmp/cuda13" cudaTypedefs.h)
incnvml=$(unpack "$(wheel nvidia-nvml-dev-cu12 "$NVML")" "$tmp/nvml" nvml.h)

"$PYTHON" "$root/scripts/gen-cuda-abi.py" \
    --cuda "$CUDA12=$inc12" --cuda "$CUDA13=$inc13" --nvml "$NVML=$incnvml" \
    --out "$root" --bindgen "$BINDGEN" --libclang "$LIBCLANG" --cc "${CC:-cc}"
