#!/usr/bin/env bash
# Builds the CUDA probe: OUTDIR/cuda-probe (dlopen + cuGetProcAddress/dlsym, needs only libdl)
# and OUTDIR/cuda-probe-direct (linked against DRIVERDIR/libcuda.so.1 and
# DRIVERDIR/libnvidia-ml.so.1, no rpath: run it with those libraries on the loader's path).
#
#   tests/cuda-probe/build.sh OUTDIR DRIVERDIR
#
# CC (default cc) and CFLAGS (added after the fixed flags) are honoured. Safe to re-run.
set -euo pipefail

die() {
    echo "cuda-probe/build.sh: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: build.sh OUTDIR DRIVERDIR"
out=$1
driver=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/probe.c"
# The generated CUDA/NVML declarations (scripts/gen-cuda-abi.sh), shared with the Rust crates.
abi="$here/../../cuda-abi/include"
cc=${CC:-cc}
flags=(-std=c11 -O2 -Wall -Wextra -Werror -I "$abi")
# shellcheck disable=SC2206 # CFLAGS is a list of words by convention
extra=(${CFLAGS:-})

[ -f "$src" ] || die "missing $src"
[ -f "$abi/gpuslice_cuda_abi.h" ] || die "missing $abi/gpuslice_cuda_abi.h"
command -v "$cc" >/dev/null 2>&1 || die "no C compiler ($cc)"
for lib in libcuda.so.1 libnvidia-ml.so.1; do
    [ -e "$driver/$lib" ] || die "no $lib in $driver"
done
mkdir -p "$out" || die "cannot create $out"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cuda-probe-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$cc" "${flags[@]}" "${extra[@]}" -o "$tmp/cuda-probe" "$src" -ldl ||
    die "compiling cuda-probe failed"
"$cc" "${flags[@]}" "${extra[@]}" -DPROBE_DIRECT -o "$tmp/cuda-probe-direct" "$src" \
    -L "$driver" -Wl,--no-as-needed -l:libcuda.so.1 -l:libnvidia-ml.so.1 -Wl,--as-needed -ldl ||
    die "compiling cuda-probe-direct failed"

# The direct build must name the driver libraries by their sonames and carry no rpath; the
# runtime-style one must not link them at all.
if command -v readelf >/dev/null 2>&1; then
    dyn=$(readelf -d "$tmp/cuda-probe-direct")
    for lib in libcuda.so.1 libnvidia-ml.so.1; do
        grep -q "(NEEDED).*\[$lib\]" <<<"$dyn" ||
            die "cuda-probe-direct does not have DT_NEEDED $lib (does $driver/$lib carry another soname?)"
    done
    if grep -Eq '\((RPATH|RUNPATH)\)' <<<"$dyn"; then die "cuda-probe-direct has an rpath"; fi
    if readelf -d "$tmp/cuda-probe" | grep -Eq '\(NEEDED\).*\[(libcuda|libnvidia-ml)'; then
        die "cuda-probe links a driver library"
    fi
fi

mv -f "$tmp/cuda-probe" "$out/cuda-probe"
mv -f "$tmp/cuda-probe-direct" "$out/cuda-probe-direct"
echo "built $out/cuda-probe $out/cuda-probe-direct"
