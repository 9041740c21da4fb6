# shellcheck shell=bash
# The guard's /metrics, scraped by a real Prometheus (Debian's prometheus package), with
# containers running through Docker on test_hook.sh's simulated node (slice0 and slice1 on
# GPU 0, 40 GiB and 50 % each): one holds 10 GiB on slice0, one fills slice0 until an
# allocation is refused and holds what it got, one runs a kernel loop on slice1. The test
# starts the guard with --metrics on a free local port and Prometheus on another, scraping
# every second, then asks Prometheus's HTTP API: the holder's memory by the driver's count, the
# refused-allocations counter at 1, rate() of slice1's GPU time near its 50 % share. The
# guard's log names the container whose allocation was refused.
# Functions defined here are called indirectly (wait_for, defer):
# shellcheck disable=SC2317

require_metrics_flow() {
    require_guard_flow
    require_docker
    command -v prometheus >/dev/null || skip "no prometheus (tests/e2e/install-deps.sh installs Debian's)"
    command -v curl >/dev/null || skip "no curl"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_metrics_guard: the guard with /metrics on a free port (METRICS_ADDR), log in $T/guard.log.
start_metrics_guard() {
    FAKEGPU_CONFIG=$E2E_FAKEGPU_TOML FAKEGPU_STATE_DIR=$T/fakegpu-state "$E2E_GENERATOR" daemon \
        --config "$T/gpuslice.toml" --nvml-lib "$E2E_FAKEGPU_LIB" --metrics 127.0.0.1:0 \
        >/dev/null 2>"$T/guard.log" 9>&- &
    GUARD_PID=$!
    defer stop_guard
    wait_for 10 grep -q 'metrics at http://' "$T/guard.log" || fail "the guard's metrics did not start: $(cat "$T/guard.log")"
    METRICS_ADDR=$(sed -n 's|.*metrics at http://\([^/]*\)/metrics.*|\1|p' "$T/guard.log" | head -n1)
    [[ -n $METRICS_ADDR ]] || fail "no metrics address in the guard's log"
}

# start_prometheus: Prometheus on a free port (PROM_URL), scraping the guard every second.
start_prometheus() {
    local port
    port=$(free_port)
    cat >"$T/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gpuslice
    static_configs:
      - targets: ['$METRICS_ADDR']
EOF
    promtool check config "$T/prometheus.yml" >&2 || fail "promtool rejects the scrape config"
    prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/prometheus-data" \
        --web.listen-address="127.0.0.1:$port" >"$T/prometheus.log" 2>&1 9>&- &
    PROM_PID=$!
    PROM_URL=http://127.0.0.1:$port
    defer stop_prometheus
    wait_for 20 curl -sf "$PROM_URL/-/ready" -o /dev/null || fail "Prometheus did not start: $(tail -n 5 "$T/prometheus.log")"
}

stop_prometheus() {
    kill -TERM "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
}

# promql QUERY: the value of QUERY's first sample now, or nothing.
promql() {
    curl -sf "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | jq -r '.data.result[0].value[1] // empty'
}

# promql_at_least QUERY MIN: QUERY's value is at least MIN.
promql_at_least() {
    local v
    v=$(promql "$1")
    [[ -n $v ]] && awk -v v="$v" -v m="$2" 'BEGIN { exit !(v >= m) }'
}

promql_is() { [[ $(promql "$1") == "$2" ]]; }

test_docker_metrics_scraped_by_prometheus() {
    require_metrics_flow
    guard_node 'interval = "1s"'
    local image hold=gpuslice-e2e-metrics-hold-$$ fill=gpuslice-e2e-metrics-fill-$$ loop=gpuslice-e2e-metrics-loop-$$
    local hold_id fill_id used charged rate line started=$SECONDS
    image=$(guard_image)
    start_metrics_guard
    start_prometheus
    printf 'guard metrics at %s, Prometheus at %s\n' "$METRICS_ADDR" "$PROM_URL"

    run_detached "$loop" --device gpuslice.dev/vgpu=slice1 "$image" \
        cuda-probe work --path kernel --kernel-ns 4000000 --seconds 60 --sync-every 16
    run_detached "$hold" --device gpuslice.dev/vgpu=slice0 "$image" \
        cuda-probe fill --path alloc --chunk 1G --max-chunks 10 --hold-forever
    wait_for 30 holding "$hold" || fail "the holder did not hold: $(e2e_docker logs "$hold" 2>&1)"
    # 10 GiB held; 16 GiB chunks: 16 and 32 fit next to it in 40 GiB, 48 does not.
    run_detached "$fill" --device gpuslice.dev/vgpu=slice0 "$image" \
        cuda-probe fill --path alloc --chunk 16G --hold-forever
    wait_for 30 holding "$fill" || fail "the filler did not hold: $(e2e_docker logs "$fill" 2>&1)"
    e2e_docker logs "$fill" 2>&1 | grep -q CUDA_ERROR_OUT_OF_MEMORY || fail "the filler was not refused: $(e2e_docker logs "$fill" 2>&1)"
    hold_id=$(e2e_docker inspect -f '{{.Id}}' "$hold")
    fill_id=$(e2e_docker inspect -f '{{.Id}}' "$fill")

    # The holder's memory, by the driver's count (its 10 GiB and its context) and as charged.
    wait_for 20 promql_at_least "gpuslice_memory_used_bytes{container_id=\"$hold_id\"}" $((10 * GIB)) ||
        fail "Prometheus has no 10 GiB for the holder: $(promql "gpuslice_memory_used_bytes{container_id=\"$hold_id\"}")"
    used=$(promql "gpuslice_memory_used_bytes{container_id=\"$hold_id\",slice=\"slice0\",gpu_index=\"0\"}")
    charged=$(promql "gpuslice_memory_charged_bytes{container_id=\"$hold_id\"}")
    printf 'holder: %s bytes by the driver'"'"'s count, %s charged by the interception library\n' "$used" "$charged"
    ((used <= 11 * GIB)) || fail "the holder uses $used bytes by the driver's count"
    ((charged >= 10 * GIB && charged <= 11 * GIB)) || fail "the holder was charged $charged bytes"
    promql_is "gpuslice_slice_memory_limit_bytes{slice=\"slice0\"}" "$HOOK_SLICE_BYTES" || fail "slice0's limit"
    # Docker passes no annotations: the hook took the name from Docker's own record.
    promql_at_least "gpuslice_memory_used_bytes{container=\"$hold\",container_id=\"$hold_id\"}" $((10 * GIB)) ||
        fail "the holder is not labelled with its name $hold"

    # One allocation refused on slice0, counted in its region, and logged once by the guard.
    wait_for 10 promql_is 'gpuslice_slice_refused_allocations_total{slice="slice0"}' 1 ||
        fail "refused allocations on slice0: $(promql 'gpuslice_slice_refused_allocations_total{slice="slice0"}')"
    promql_is 'gpuslice_slice_refused_allocations_total{slice="slice1"}' 0 || fail "refusals counted on slice1"
    wait_for 10 guard_line "slice0: container ${fill_id:0:12} \\($fill\\).*an allocation was refused" ||
        fail "the guard did not log the refusal: $(cat "$T/guard.log")"
    line=$(guard_line "an allocation was refused")
    printf 'guard: %s\n' "$line"
    (($(grep -c 'an allocation was refused' "$T/guard.log") == 1)) || fail "the refusal was logged more than once"

    # slice1's kernel loop: rate() of its GPU time near its 50 % share, over 8 s in which the
    # loop ran throughout (its GPU time had grown already 8 s ago), so its start is not in it.
    wait_for 30 promql_at_least 'gpuslice_slice_gpu_time_seconds_total{slice="slice1"} offset 8s' 0.1 ||
        fail "slice1's loop did not run for 8 s: $(promql 'gpuslice_slice_gpu_time_seconds_total{slice="slice1"}')"
    rate=$(promql 'rate(gpuslice_slice_gpu_time_seconds_total{slice="slice1"}[8s])')
    printf 'slice1: rate(gpu time) = %s by the driver'"'"'s samples, %s as the interception library paced it (share 0.5)\n' \
        "$rate" "$(promql 'rate(gpuslice_slice_charged_gpu_time_seconds_total{slice="slice1"}[8s])')"
    awk -v r="$rate" 'BEGIN { exit !(r != "" && r >= 0.4 && r <= 0.6) }' || fail "slice1's GPU time rate is ${rate:-missing}, share 0.5"
    promql_is 'gpuslice_slice_compute_share_ratio{slice="slice1"}' 0.5 || fail "slice1's share"
    promql_is 'gpuslice_region_readable{slice="slice0"}' 1 || fail "slice0's region is not readable"
    promql_is 'up{job="gpuslice"}' 1 || fail "the scrape target is not up"
    printf 'metrics: passed in %d s\n' "$((SECONDS - started))"
}
