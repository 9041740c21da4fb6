# shellcheck shell=bash disable=SC2154
# GPU tier, sourced by tests/gpu/run.sh: NVML inside a slice shows the slice, on the real
# driver. The probe keeps GPU 0 busy in slice gpu-test (A) and in slice cores50 (B); from A,
# tests/cudart/nvml-check.py (nvidia-ml-py) must list A's program alone in every process list,
# with what A charged it, A's utilisation only, and A's memory; from the host, both. Uses
# run.sh's in_slice, pass, fail, skip, field, $work, $probe, $limit and $root.

# nvml_has LIST PID: LIST (pid:value,…) names PID.
nvml_has() { case ",$1," in *",$2:"*) return 0 ;; esac; return 1; }

# nvml_only LIST PID: every entry of LIST is PID's.
nvml_only() {
    local entry
    for entry in $(printf '%s' "$1" | tr ',' ' '); do
        [ "${entry%%:*}" = "$2" ] || return 1
    done
}

# nvml_worker SLICE PIDFILE: the probe busy for a minute in SLICE, in the background; its PID
# (sh execs it) in PIDFILE.
nvml_worker() {
    # shellcheck disable=SC2016 # $$, $0 and $@ are the inner shell's.
    SLICE=$1 in_slice sh -c 'echo $$ >"$0"; exec "$@"' "$2" "$probe" work --path kernel --kernel-ns 2000000 \
        --seconds 60 >"$2.log" 2>&1 &
    local tries=0
    while [ ! -s "$2" ] && [ $tries -lt 300 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    cat "$2" 2>/dev/null
}

nvml_checks() {
    local check=$root/tests/cudart/nvml-check.py a b out host key
    if [ -z "${probe:-}" ]; then
        skip "NVML in a slice" "the CUDA probe did not build"
        return
    fi
    if ! python3 -c 'import pynvml' >/dev/null 2>&1; then
        skip "NVML in a slice" "python3 cannot import pynvml (pip install nvidia-ml-py)"
        return
    fi
    b=$(nvml_worker cores50 "$work/nvml-b.pid")
    a=$(nvml_worker gpu-test "$work/nvml-a.pid")
    if [ -z "$a" ] || [ -z "$b" ]; then
        fail "NVML in a slice" "the workers did not start: $(cat "$work"/nvml-*.pid.log 2>/dev/null)"
        [ -n "$a" ] && kill "$a"
        [ -n "$b" ] && kill "$b"
        return
    fi
    host=$(CUDA_VISIBLE_DEVICES=0 python3 "$check" view --wait-busy "$b" 2>&1)
    if nvml_has "$(field "$host" compute_v3)" "$a" && nvml_has "$(field "$host" compute_v3)" "$b"; then
        pass "NVML on the host lists both slices' programs"
    else
        fail "NVML on the host" "$host"
    fi
    out=$(in_slice python3 "$check" view --wait-busy "$a" 2>&1)
    printf '%s\n' "$out" | sed 's/^/gpu:     /'
    for key in compute_v1 compute_v2 compute_v3; do
        if [ -n "$(field "$out" "$key")" ] && nvml_only "$(field "$out" "$key")" "$a"; then
            pass "NVML $key in a slice: its own program alone"
        else
            fail "NVML $key in a slice" "$(field "$out" "$key"), want $a alone"
        fi
    done
    if nvml_has "$(field "$out" process_util)" "$a" && nvml_only "$(field "$out" process_util)" "$a" &&
        [ "$(field "$out" util_gpu)" -gt 0 ] 2>/dev/null; then
        pass "NVML utilisation in a slice: its own work, $(field "$out" util_gpu) %"
    else
        fail "NVML utilisation in a slice" "$out"
    fi
    for key in compute_v3 detail_list process_util utilization_info; do
        nvml_has "$(field "$out" "$key")" "$b" && fail "NVML $key in a slice shows another slice's $b" "$out"
    done
    if [ "$(field "$out" mem_total)" = "$limit" ] && [ "$(field "$out" mem2_total)" = "$limit" ] &&
        [ "$(field "$out" bar1_total)" -le "$limit" ] 2>/dev/null; then
        pass "NVML memory, memory_v2 and BAR1 in a slice: at most 4 GiB"
    else
        fail "NVML memory in a slice" "$out"
    fi
    kill "$a" "$b" 2>/dev/null
}
nvml_checks
