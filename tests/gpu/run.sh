#!/usr/bin/env bash
# GPU tier: the shim on a real NVIDIA GPU, in 4 GiB slices of GPU 0 (one unpaced, one at 25 %
# and one at 50 % of the GPU's time).
#
#   tests/gpu/run.sh            as root, after `make release` (no Rust needed here: the
#                               binaries may be built elsewhere and carried over)
#
# The slice is made by the real generator from the real NVML, and mounted the way the hook
# mounts it in a container: the slice directory read-only in a private mount namespace, its
# region read-write on top. Each check that cannot run says `skipped: <why>`; the last line is
# `gpu: N passed, N failed, N skipped`.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${GPUSLICE_BIN:-$root/target/release}
shim=$bin/libgpuslice.so
passed=0 failed=0 skipped=0
pass() { echo "gpu: $1: passed"; passed=$((passed + 1)); }
fail() { echo "gpu: $1: FAILED"; printf '%s\n' "$2" | sed 's/^/gpu:     /'; failed=$((failed + 1)); }
skip() { echo "gpu: $1: skipped: $2"; skipped=$((skipped + 1)); }
summary() {
    echo "gpu: $passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu: skipped: no NVIDIA GPU here (nvidia-smi not found or failing)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "gpu: skipped: needs root for the read-only slice mount"
    exit 0
fi
for f in "$shim" "$bin/gpuslice-cdi"; do
    [ -e "$f" ] || { echo "gpu: FAILED: $f not built (make release)"; exit 1; }
done

limit=$((4 << 30))
work=$(mktemp -d /tmp/gpuslice-gpu.XXXXXX)
# generate puts each slice's region and the GPU's board on zram devices: remove them too.
remove_devices() {
    local node dev id
    find "$work/host" -type b 2>/dev/null | while IFS= read -r node; do
        dev=$((16#$(stat -c %t "$node"))):$((16#$(stat -c %T "$node")))
        id=$(basename "$(readlink "/sys/dev/block/$dev" 2>/dev/null)")
        [ "${id#zram}" != "$id" ] && echo "${id#zram}" >/sys/class/zram-control/hot_remove 2>/dev/null
    done
    true
}
trap 'remove_devices; rm -rf "$work"' EXIT
uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0 | tr -d ' ')
echo "gpu: GPU 0: $uuid, $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i 0)"
# A GPU 0 already in MIG mode has no software slices: only mode mig's checks (tests/gpu/mig.sh).
[ "$(nvidia-smi --query-gpu=mig.mode.current --format=csv,noheader -i 0 | tr -d ' ')" = Enabled ] && { . "$here/mig.sh"; summary; exit; }

# The slice, as `gpuslice-cdi generate` makes it on a GPU box.
cat >"$work/config.toml" <<EOF
state_dir = "$work/host"
spec_dir = "$work/cdi"
[[gpu]]
index = 0
slices = [
    { name = "gpu-test", memory = "4GiB", cores = 100 },
    { name = "cores25", memory = "4GiB", cores = 25 },
    { name = "cores50", memory = "4GiB", cores = 50 },
]
EOF
if ! out=$("$bin/gpuslice-cdi" generate --config "$work/config.toml" 2>&1); then
    fail "gpuslice-cdi generate on the real NVML" "$out"
    summary
    exit 1
fi
pass "gpuslice-cdi generate on the real NVML"
for s in gpu-test cores25 cores50; do mkdir -p "$work/view/slices/$s"; done
mkdir -p "$work/view/gpus/$uuid" && : >"$work/view/gpus/$uuid/board"

# in_slice CMD…: CMD with the slice (SLICE, default gpu-test) mounted as the hook mounts it in
# a container, and the shim preloaded.
in_slice() {
    unshare --mount --propagation private -- sh -c '
        set -e
        h=$1/host/slices/$2 v=$1/view/slices/$2
        mount --bind "$h" "$v"
        mount -o remount,bind,ro "$v"
        mount --bind "$h/region" "$v/region"
        mount --bind "$1/host/gpus/$3/board" "$1/view/gpus/$3/board"
        shift 3
        exec "$@"' sh "$work" "${SLICE:-gpu-test}" "$uuid" \
        env GPUSLICE_STATE_DIR="$work/view" LD_PRELOAD="$shim" CUDA_VISIBLE_DEVICES=0 "$@"
}
# share_check NAME PERCENT GPU_MS WALL_NS: passes when GPU_MS of kernels over WALL_NS of wall
# time is PERCENT ± 5 points.
share_check() {
    local name=$1 want=$2 gpu_ms=$3 wall=$4 share
    share=$(awk -v g="$gpu_ms" -v w="$wall" 'BEGIN { printf "%.1f", g * 1e8 / w }')
    echo "gpu: $name: share $share % (want $want ± 5)"
    if awk -v s="$share" -v w="$want" 'BEGIN { exit !(s >= w - 5 && s <= w + 5) }'; then
        pass "$name: $share % of the GPU"
    else
        fail "$name" "share $share %, want $want ± 5"
    fi
}
field() { printf '%s\n' "$1" | sed -n "s/^$2=//p" | head -n1; }

# The CUDA probe, built against the real driver.
driver=$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
if [ -n "$driver" ] && bash "$root/tests/cuda-probe/build.sh" "$work/probe" "$(dirname "$driver")" >/dev/null 2>&1; then
    probe=$work/probe/cuda-probe
    out=$(in_slice "$probe" meminfo 2>&1)
    [ "$(field "$out" total)" = "$limit" ] && pass "cuMemGetInfo total = 4 GiB" || fail "cuMemGetInfo" "$out"
    [ "$(field "$out" device_total)" = "$limit" ] && pass "cuDeviceTotalMem = 4 GiB" || fail "cuDeviceTotalMem" "$out"
    out=$(in_slice "$probe" nvml-meminfo 2>&1)
    [ "$(field "$out" total)" = "$limit" ] && pass "NVML total = 4 GiB" || fail "NVML memory info" "$out"
    for path in alloc pitch managed vmm async pool array array3d mipmap ctx; do
        chunk=256MiB
        [ "$path" = ctx ] && chunk=1
        out=$(in_slice "$probe" fill --path "$path" --chunk "$chunk" 2>&1)
        bytes=$(field "$out" bytes)
        if printf '%s' "$out" | grep -q CUDA_ERROR_OUT_OF_MEMORY && [ -n "$bytes" ] && [ "$bytes" -le "$limit" ]; then
            pass "probe fill --path $path stops at the limit ($bytes bytes, $(field "$out" chunks) chunks)"
        else
            fail "probe fill --path $path" "$out"
        fi
    done
    for route in "--dlsym" "--ptsz" "--cuda-version 11040"; do
        # shellcheck disable=SC2086
        out=$(in_slice "$probe" $route fill --path alloc --chunk 256MiB 2>&1)
        bytes=$(field "$out" bytes)
        [ -n "$bytes" ] && [ "$bytes" -le "$limit" ] && pass "probe $route is limited" || fail "probe $route" "$out"
    done
    out=$(in_slice "$work/probe/cuda-probe-direct" fill --path alloc --chunk 256MiB 2>&1)
    bytes=$(field "$out" bytes)
    [ -n "$bytes" ] && [ "$bytes" -le "$limit" ] && pass "directly linked probe is limited" || fail "direct probe" "$out"
    # Compute: 1 ms kernels (a spin on %globaltimer) back to back; GPU time over wall time.
    for want in 25 50; do
        count=$((want * 30))
        out=$(SLICE=cores$want in_slice "$probe" launch --duration-ns 1000000 --count "$count" 2>&1)
        wall=$(field "$out" elapsed_ns)
        if [ -n "$wall" ]; then share_check "probe launch in a $want % slice" "$want" "$count" "$wall"; else fail "probe launch" "$out"; fi
    done
    out=$(in_slice "$probe" launch --duration-ns 1000000 --count 1000 2>&1)
    wall=$(field "$out" elapsed_ns)
    if [ -n "$wall" ]; then share_check "probe launch in an unpaced slice" 100 1000 "$wall"; else fail "probe launch" "$out"; fi
    for b in bench-launch bench-alloc; do
        plain=$(CUDA_VISIBLE_DEVICES=0 "$probe" "$b" 2>&1 | sed -n 's/^ns_per_op=//p')
        sliced=$(in_slice "$probe" "$b" 2>&1 | sed -n 's/^ns_per_op=//p')
        echo "gpu: $b: $plain ns without the shim, $sliced ns through it"
    done
else
    skip "probe checks" "the CUDA probe did not build against ${driver:-no libcuda.so.1 in ldconfig}"
fi

out=$(in_slice nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2>&1)
[ "$(printf '%s' "$out" | tr -d ' ')" = "4096" ] && pass "nvidia-smi shows 4096 MiB" || fail "nvidia-smi" "$out"

# nvcc: a CUDA runtime program that allocates until it is refused.
if command -v nvcc >/dev/null 2>&1; then
    cat >"$work/fill.cu" <<'CU'
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    printf("total=%zu\n", t);
    size_t n = 0;
    void *p;
    while (cudaMalloc(&p, 256 << 20) == cudaSuccess) n += 256 << 20;
    printf("bytes=%zu\n", n);
    return 0;
}
CU
    if nvcc -o "$work/fill" "$work/fill.cu" >/dev/null 2>&1; then
        out=$(in_slice "$work/fill" 2>&1)
        t=$(field "$out" total) b=$(field "$out" bytes)
        [ "$t" = "$limit" ] && [ -n "$b" ] && [ "$b" -le "$limit" ] &&
            pass "nvcc program: total 4 GiB, refused after $b bytes" || fail "nvcc program" "$out"
    else
        fail "nvcc" "could not build fill.cu"
    fi
else
    skip "nvcc program" "nvcc not found"
fi

# nvcc: a kernel loop, as a training step launches them, in a 25 % and a 50 % slice.
if command -v nvcc >/dev/null 2>&1; then
    cat >"$work/loop.cu" <<'CU'
#include <cstdio>
#include <chrono>
#include <cuda_runtime.h>
__global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
int main() {
    const int n = 1500;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; i++) {
        spin<<<1, 1>>>(1000000ull);
        if (i % 8 == 7) cudaStreamSynchronize(0);
    }
    cudaDeviceSynchronize();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    printf("gpu_ms=%d\nwall_ns=%lld\n", n, (long long)ns);
    return 0;
}
CU
    if nvcc -o "$work/loop" "$work/loop.cu" >/dev/null 2>&1; then
        for want in 25 50; do
            out=$(SLICE=cores$want in_slice "$work/loop" 2>&1)
            wall=$(field "$out" wall_ns)
            if [ -n "$wall" ]; then share_check "nvcc kernel loop in a $want % slice" "$want" 1500 "$wall"; else fail "nvcc loop" "$out"; fi
        done
    else
        fail "nvcc" "could not build loop.cu"
    fi
else
    skip "nvcc kernel loop" "nvcc not found"
fi

# PyTorch: mem_get_info, a 5 GiB tensor, cudaMallocAsync and expandable segments (cuMemCreate).
if python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
    cat >"$work/torch_check.py" <<'PY'
import torch
free, total = torch.cuda.mem_get_info()
print(f"total={total}")
try:
    x = torch.empty(5 << 30, dtype=torch.uint8, device="cuda")
    print("oom=0")
except torch.cuda.OutOfMemoryError:
    print("oom=1")
y = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
print("fits=1")
PY
    for conf in "" "backend:cudaMallocAsync" "expandable_segments:True"; do
        out=$(in_slice env PYTORCH_CUDA_ALLOC_CONF="$conf" python3 "$work/torch_check.py" 2>&1)
        if [ "$(field "$out" total)" = "$limit" ] && [ "$(field "$out" oom)" = 1 ] && [ "$(field "$out" fits)" = 1 ]; then
            pass "PyTorch (${conf:-caching allocator}): mem_get_info 4 GiB, 5 GiB refused, 2 GiB fits"
        else
            fail "PyTorch (${conf:-caching allocator})" "$out"
        fi
    done
else
    skip "PyTorch checks" "python3 cannot import torch with CUDA"
fi

# Context limits, modules, green contexts and resets (calibration printout first).
. "$here/limits.sh"
# NVML (nvidia-ml-py) in a slice: only the slice's processes, work and memory.
# shellcheck source=tests/gpu/nvml.sh
. "$here/nvml.sh"
# Graph memory and stream-ordered frees.
# shellcheck source=tests/gpu/graphmem.sh
. "$here/graphmem.sh"
# Mode mps: the node daemon's MPS control daemon, its pinned limit and thread percentage.
# shellcheck source=tests/gpu/mps.sh
. "$here/mps.sh"
summary
