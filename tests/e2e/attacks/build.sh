#!/usr/bin/env bash
# Builds the guard's attack programs into OUTDIR: dlvsym, dlmopen, private-copy, elf-lookup and
# plain (dynamically linked, like any program in an image), own-loader (linked statically: it
# runs plain under its own copy of the dynamic loader, which does not read /etc/ld.so.preload),
# and forge-clock (keeps the slice region's pacing clock forged).
#
#   tests/e2e/attacks/build.sh OUTDIR
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cc=${CC:-cc}
flags=(-std=gnu11 -O2 -Wall -Wextra -Werror)
mkdir -p "$out"
for name in dlvsym dlmopen private_copy elf_lookup plain forge_clock; do
    "$cc" "${flags[@]}" -o "$out/${name//_/-}" "$src/$name.c" -ldl
done
"$cc" "${flags[@]}" -static -o "$out/own-loader" "$src/own_loader.c"
echo "built $out/{dlvsym,dlmopen,private-copy,elf-lookup,plain,forge-clock,own-loader}"
