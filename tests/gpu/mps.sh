# shellcheck shell=bash disable=SC2154
# GPU tier, sourced by tests/gpu/run.sh: mode mps on the real driver. GPU 0's settings are never
# changed (MPS needs no mode change): the node daemon (`gpuslice-cdi daemon`) starts the real
# nvidia-cuda-mps-control for GPU 0 with a pipe directory under $work, and one mps slice of
# 2 GiB at 25 % is checked from a process that is its client, as a container on the slice is:
# the daemon's pinned limit holds (its own variable cannot raise it), cuMemGetInfo shows it,
# and kernels that fill the GPU take about 4 times as long as without MPS. Uses run.sh's pass,
# fail, skip, field, $work, $probe, $bin, $uuid and $root.

mps_limit=$((2 << 30))

# mps_daemon_running STATE_DIR: the node daemon reports GPU 0's MPS daemon running.
mps_daemon_running() {
    "$bin/gpuslice-cdi" status --state-dir "$1" --json 2>/dev/null |
        tr -d ' \n' | grep -q '"mps_daemon":{[^}]*"running":true'
}

# mps_client DIR CMD…: CMD as a client of the MPS daemon whose pipe directory is DIR, with the
# slice's variables as the spec gives them (unless the caller overrides them in the env).
mps_client() {
    local pipe=$1
    shift
    env CUDA_VISIBLE_DEVICES=0 CUDA_MPS_PIPE_DIRECTORY="$pipe" \
        CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="${MPS_THREADS:-25}" \
        CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="${MPS_PINNED:-0=2048M}" "$@"
}

mps_checks() {
    local control state pipe daemon_pid out bytes tries loop t_mps t_direct
    control=$(command -v nvidia-cuda-mps-control)
    if [ -z "$control" ]; then
        skip "mode mps" "nvidia-cuda-mps-control not found"
        return
    fi
    if [ -z "${probe:-}" ]; then
        skip "mode mps" "the CUDA probe did not build"
        return
    fi
    if [ "$(nvidia-smi --query-gpu=mig.mode.current --format=csv,noheader -i 0 2>/dev/null | tr -d ' ')" = Enabled ]; then
        skip "mode mps" "GPU 0 is in MIG mode (never changed here)"
        return
    fi
    if [ "$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader -i 0 2>/dev/null | tr -d ' ')" = Prohibited ]; then
        skip "mode mps" "GPU 0's compute mode is Prohibited (never changed here)"
        return
    fi
    state=$work/host/mpsnode
    mkdir -p "$state" "$work/mps-cdi"
    cat >"$work/mps.toml" <<EOF
state_dir = "$state"
spec_dir = "$work/mps-cdi"
[[gpu]]
index = 0
mode = "mps"
slices = [{ name = "mps-a", memory = "2GiB", cores = 25 }]
[mps]
control = "$control"
[guard]
metrics = ""
memory_policy = "log"
unsliced_policy = "log"
EOF
    if ! out=$("$bin/gpuslice-cdi" generate --config "$work/mps.toml" 2>&1); then
        fail "mode mps: generate" "$out"
        return
    fi
    if grep -q 'CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2048M' "$work/mps-cdi/"*.yaml &&
        grep -q 'CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25' "$work/mps-cdi/"*.yaml; then
        pass "mode mps: the spec sets the slice's MPS variables"
    else
        fail "mode mps: the spec's MPS variables" "$(cat "$work/mps-cdi/"*.yaml)"
    fi
    "$bin/gpuslice-cdi" daemon --config "$work/mps.toml" >/dev/null 2>"$work/mps-daemon.log" &
    daemon_pid=$!
    tries=0
    while ! mps_daemon_running "$state" && [ $tries -lt 200 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    if ! mps_daemon_running "$state"; then
        fail "mode mps: the node daemon starts nvidia-cuda-mps-control" "$(cat "$work/mps-daemon.log")"
        mps_stop "$daemon_pid"
        return
    fi
    pass "mode mps: the node daemon started nvidia-cuda-mps-control"
    pipe=$state/mps/$uuid/pipe

    # Memory: the pinned limit, from the spec's variable, from the daemon's default alone, and
    # against a client raising its own.
    out=$(mps_client "$pipe" "$probe" meminfo 2>&1)
    if [ "$(field "$out" total)" = "$mps_limit" ]; then
        pass "mode mps: cuMemGetInfo total = the 2 GiB pinned limit"
    else
        fail "mode mps: cuMemGetInfo under MPS" "$out"
    fi
    for pinned in 0=2048M 0=80G; do
        out=$(MPS_PINNED=$pinned mps_client "$pipe" "$probe" fill --path alloc --chunk 256MiB 2>&1)
        bytes=$(field "$out" bytes)
        if printf '%s' "$out" | grep -q CUDA_ERROR_OUT_OF_MEMORY && [ -n "$bytes" ] && [ "$bytes" -le "$mps_limit" ]; then
            pass "mode mps: CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=$pinned: refused at the daemon's limit ($bytes bytes)"
        else
            fail "mode mps: CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=$pinned" "$out"
        fi
    done

    # Compute: a kernel that fills every SM for 2 ms, on 25 % of them, against the same kernel
    # without MPS (an empty pipe directory: no daemon there).
    if command -v nvcc >/dev/null 2>&1; then
        loop=$work/mps-loop
        cat >"$loop.cu" <<'CU'
#include <cstdio>
#include <chrono>
#include <cuda_runtime.h>
__global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
int main() {
    int sms = 0, per_sm = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, spin, 1024, 0);
    spin<<<1, 1>>>(1000ull);
    cudaDeviceSynchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 50; i++) spin<<<sms * per_sm, 1024>>>(2000000ull);
    cudaError_t e = cudaDeviceSynchronize();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    printf("error=%s\nwall_ns=%lld\n", cudaGetErrorName(e), (long long)ns);
    return e != cudaSuccess;
}
CU
        if nvcc -o "$loop" "$loop.cu" >/dev/null 2>&1; then
            mkdir -p "$work/no-mps"
            t_mps=$(field "$(MPS_THREADS=100 mps_client "$pipe" "$loop" 2>&1)" wall_ns)
            t_direct=$(field "$(mps_client "$work/no-mps" "$loop" 2>&1)" wall_ns)
            echo "gpu: mode mps: 50 full-GPU kernels of 2 ms: ${t_mps:-?} ns on the 25 % slice (asking 100 %), ${t_direct:-?} ns without MPS"
            if [ -n "$t_mps" ] && [ -n "$t_direct" ] && awk -v a="$t_mps" -v b="$t_direct" 'BEGIN { exit !(a >= 2.5 * b) }'; then
                pass "mode mps: 25 % of the SMs held (kernels $(awk -v a="$t_mps" -v b="$t_direct" 'BEGIN { printf "%.1f", a / b }')× as long)"
            else
                fail "mode mps: the active thread percentage" "with MPS ${t_mps:-none} ns, without ${t_direct:-none} ns"
            fi
        else
            fail "mode mps: nvcc" "could not build mps-loop.cu"
        fi
    else
        skip "mode mps: the active thread percentage" "nvcc not found"
    fi
    mps_stop "$daemon_pid"
    if grep -rqs 'quit' "$state/mps/$uuid/log/control.log"; then
        pass "mode mps: the node daemon quit nvidia-cuda-mps-control on stop"
    else
        fail "mode mps: quit on stop" "$(cat "$work/mps-daemon.log" "$state/mps/$uuid/log/control.log" 2>&1)"
    fi
}

# mps_stop PID: stop the node daemon (it quits its MPS daemon), killing it past 20 s.
mps_stop() {
    local tries=0
    kill -TERM "$1" 2>/dev/null
    while kill -0 "$1" 2>/dev/null && [ $tries -lt 200 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    true
}

mps_checks
