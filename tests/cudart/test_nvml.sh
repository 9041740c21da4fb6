# shellcheck shell=bash
# NVML inside a slice shows the slice, through NVIDIA's own NVML client (nvidia-ml-py, in the
# torch environment of frameworks.txt) and torch.cuda.list_gpu_processes(): a CUDA program
# (cudart-check, NVIDIA's runtime 13.2) works in slice0 and one in slice1, both on GPU 0; from
# slice0, nvml-check.py sees slice0's program alone, with what slice0 charged it, its
# utilisation and no more, slice0's memory and a BAR1 no larger; the host sees both.

NVML_CHECK=$CUDART_DIR/nvml-check.py
# The runtime of torch's environment, against which cudart-check is built here.
NVML_RUNTIME=13.2.86

nvml_variants() { cudart_frameworks | grep '^torch$'; }

# nvml_worker SLICE: cudart-check busy for a minute in SLICE, in the background; waits until
# it has started and sets WORKER_PID to its PID (the program's own: sh execs it).
nvml_worker() {
    local slice=$1 pidfile=$T/$1.pid deadline=$((SECONDS + 30))
    # shellcheck disable=SC2016 # $$, $0 and $@ are the inner shell's.
    PROG="sh" cudart_in_slice "$slice" -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$T/bin/cudart-check" \
        work --ns 2000000 --seconds 60 >"$T/$slice.log" 2>&1 &
    until [[ -s $pidfile ]]; do
        ((SECONDS < deadline)) || fail "the worker in $slice did not start: $(cat "$T/$slice.log")"
        sleep 0.1
    done
    WORKER_PID=$(<"$pidfile")
    defer kill "$WORKER_PID"
}

# has LIST PID: LIST (pid:value,…) names PID.
has() { [[ ,$1, == *",$2:"* ]]; }

# only LIST PID...: every PID of LIST is one of the PIDs given.
only() {
    local list=$1 entry
    shift
    for entry in ${list//,/ }; do
        [[ " $* " == *" ${entry%%:*} "* ]] || return 1
    done
}

test_nvml_slice_view() {
    local out host a b
    require_framework
    cudart_installed "$NVML_RUNTIME" || skip "runtime $NVML_RUNTIME is not installed in $CUDART_CACHE (run with --install)"
    command -v gcc >/dev/null || skip "no gcc to build cudart-check"
    "$PROG" -c 'import pynvml' 2>/dev/null || skip "nvidia-ml-py is not installed in $RT's environment"
    cudart_node
    cudart_build "$NVML_RUNTIME" "$T/bin" >"$T/build.log" 2>&1 || fail "building cudart-check: $(tail -n 3 "$T/build.log")"
    nvml_worker slice1
    b=$WORKER_PID
    nvml_worker slice0
    a=$WORKER_PID

    # The host: both programs, the card's utilisation.
    run_ok "nvml-check on the host" host cudart_bare "$NVML_CHECK" view --wait-busy "$b"
    has "$(kv compute_v3 "$host")" "$a" || fail "the host does not list slice0's program $a"
    has "$(kv compute_v3 "$host")" "$b" || fail "the host does not list slice1's program $b"

    # Slice0: its program alone, charged its context; its own work; its memory.
    run_ok "nvml-check in slice0" out cudart_in_slice slice0 "$NVML_CHECK" view --wait-busy "$a" --torch
    [[ $(kv wait_busy "$out") != timeout ]] || fail "slice0's work never showed in its own view"
    for key in compute_v1 compute_v2 compute_v3 detail_list; do
        assert_eq "$key in slice0" "$(kv "$key" "$out")" "$a:$CUDART_CONTEXT_BYTES"
    done
    only "$(kv utilization_info "$out")" "$a" || fail "utilisation info of another slice in slice0: $(kv utilization_info "$out")"
    assert_eq "graphics processes in slice0" "$(kv graphics_v3 "$out")" ""
    only "$(kv process_util "$out")" "$a" || fail "utilisation samples of another slice in slice0: $(kv process_util "$out")"
    has "$(kv process_util "$out")" "$a" || fail "no utilisation sample of slice0's own program"
    # slice0's share is 50 %: its work, not the card's (both slices busy).
    assert_between "slice0's GPU utilisation (%)" "$(kv util_gpu "$out")" 1 65
    assert_eq "sample value type" "$(kv samples_type "$out")" 1
    assert_between "slice0's utilisation samples (%)" "$(kv samples_max "$out")" 1 65
    assert_eq "samples after a future timestamp" "$(kv samples_future "$out")" not_found
    assert_eq "memory total" "$(kv mem_total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "memory used" "$(kv mem_used "$out")" "$CUDART_CONTEXT_BYTES"
    assert_eq "memory_v2 total" "$(kv mem2_total "$out")" "$CUDART_SLICE_BYTES"
    assert_eq "memory_v2 reserved + used + free" \
        $(($(kv mem2_reserved "$out") + $(kv mem2_used "$out") + $(kv mem2_free "$out"))) "$CUDART_SLICE_BYTES"
    assert_between "BAR1 total" "$(kv bar1_total "$out")" 1 "$CUDART_SLICE_BYTES"
    assert_eq "BAR1 used + free" $(($(kv bar1_used "$out") + $(kv bar1_free "$out"))) "$(kv bar1_total "$out")"
    # torch.cuda.list_gpu_processes() in slice0: slice0's program, never slice1's.
    [[ ,$(kv torch_pids "$out"), == *",$a,"* ]] || fail "torch.cuda.list_gpu_processes() misses $a"
    [[ ,$(kv torch_pids "$out"), != *",$b,"* ]] || fail "torch.cuda.list_gpu_processes() in slice0 shows slice1's $b"

    # Nothing of slice1 in any form of any query from slice0.
    for key in compute_v1 compute_v2 compute_v3 detail_list process_util utilization_info torch_pids; do
        [[ ,$(kv "$key" "$out"), != *",$b"[:,]* ]] || fail "$key in slice0 shows slice1's $b: $(kv "$key" "$out")"
    done
}
