# shellcheck shell=bash
# Docker Swarm on one node: services cannot take devices, but Swarm schedules generic
# resources. `gpuslice-cdi setup docker --swarm` advertises one `gpuslice=<slice>` per slice and
# makes gpuslice-runtime the default runtime; a service asking for `--generic-resource
# gpuslice=1` gets a free slice per replica, and each replica's container runs on the slice
# Swarm assigned it (DOCKER_RESOURCE_GPUSLICE, read by gpuslice-runtime).
#
# The test runs a second dockerd of its own (its daemon.json, data root, exec root and socket,
# with the e2e tier's --iptables=false --bridge=none), so the shared daemon is never
# reconfigured or put in swarm mode; the swarm is left and that daemon stopped at the end.

E2E_SWARM_RUN=$E2E_RUN_DIR/swarm
E2E_SWARM_SOCK=$E2E_SWARM_RUN/docker.sock
E2E_SWARM_ROOT=$E2E_STATE_DIR/swarm-docker
E2E_SWARM_SERVICE=gpuslice-e2e-swarm

swarm_docker() { "$(e2e_docker_bin)" -H "unix://$E2E_SWARM_SOCK" "$@"; }

swarm_dockerd_pid() { cat "$E2E_SWARM_RUN/docker.pid" 2>/dev/null; }

# start_swarm_dockerd DAEMON_JSON: the second dockerd, stopped (out of the swarm) at the end.
start_swarm_dockerd() {
    mkdir -p "$E2E_SWARM_RUN" "$E2E_SWARM_ROOT"
    (
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-"
        done
        exec setsid -f dockerd --config-file "$1" --data-root "$E2E_SWARM_ROOT" --exec-root "$E2E_SWARM_RUN/exec" \
            --pidfile "$E2E_SWARM_RUN/docker.pid" -H "unix://$E2E_SWARM_SOCK" --iptables=false --bridge=none \
            >>"$T/swarm-dockerd.log" 2>&1 </dev/null
    )
    defer stop_swarm_dockerd
    wait_for 60 swarm_docker info || fail "the swarm test's dockerd did not answer within 60 s: $(tail -n 20 "$T/swarm-dockerd.log")"
}

stop_swarm_dockerd() {
    local pid
    swarm_docker service rm "$E2E_SWARM_SERVICE" >/dev/null 2>&1
    swarm_docker swarm leave --force >/dev/null 2>&1
    pid=$(swarm_dockerd_pid) || return 0
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid"
}

# swarm_task_containers: the running containers of the service, one ID a line.
swarm_task_containers() {
    swarm_docker ps -q --filter "label=com.docker.swarm.service.name=$E2E_SWARM_SERVICE"
}

swarm_tasks_running() { (($(swarm_task_containers | wc -l) == $1)); }

# swarm_container_said ID: the container printed its slice line.
swarm_container_said() { swarm_docker logs "$1" 2>/dev/null | grep -q '^slice='; }

test_swarm_service_replicas_get_their_own_slices() {
    require_runtime_flow
    require_docker
    hook_node false
    local image out id ids slice resource seen=() state pending
    # gpuslice-cdi setup writes the swarm daemon's config: the runtime (this build, with the
    # test's config) as the default, and the four slices as generic resources.
    printf '#!/bin/sh\nexec %q --gpuslice-config=%q "$@"\n' "$E2E_RUNTIME" "$T/gpuslice.toml" >"$T/gpuslice-runtime"
    chmod 755 "$T/gpuslice-runtime"
    printf '{}\n' >"$T/daemon.json"
    out=$("$E2E_GENERATOR" setup docker --swarm --runtime-path "$T/gpuslice-runtime" --file "$T/daemon.json" \
        --config "$T/gpuslice.toml") || fail "gpuslice-cdi setup docker --swarm failed"
    printf '%s\n' "$out"
    jq -e '.["node-generic-resources"] == ["gpuslice=slice0", "gpuslice=slice1", "gpuslice=slice2", "gpuslice=slice3"]
        and .["default-runtime"] == "gpuslice"' "$T/daemon.json" >/dev/null ||
        fail "setup docker --swarm wrote: $(cat "$T/daemon.json")"
    start_swarm_dockerd "$T/daemon.json"
    image=$(e2e_glibc_image)
    e2e_docker save "$image" | swarm_docker load >/dev/null || fail "loading $image into the swarm's dockerd failed"
    swarm_docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:12377 --data-path-port 14789 >/dev/null ||
        fail "docker swarm init failed: $(tail -n 20 "$T/swarm-dockerd.log")"
    mkdir -p "$T/fakegpu-state"
    # Five replicas of one slice each on a node with four slices: four run, one waits. slice2
    # and slice3 are on GPU 1, CUDA device 1 (the simulated driver lists every GPU).
    # shellcheck disable=SC2016
    swarm_docker service create --detach --no-resolve-image --name "$E2E_SWARM_SERVICE" --replicas 5 \
        --generic-resource gpuslice=1 --restart-condition none --stop-grace-period 1s --network host \
        --mount "type=bind,src=$E2E_FAKEGPU_TOML,dst=/fakegpu/config.toml,readonly" \
        --mount "type=bind,src=$T/fakegpu-state,dst=/fakegpu/state" \
        --env FAKEGPU_CONFIG=/fakegpu/config.toml --env FAKEGPU_STATE_DIR=/fakegpu/state \
        "$image" sh -c 'd=0; case $DOCKER_RESOURCE_GPUSLICE in slice2 | slice3) d=1 ;; esac; cuda-probe --device $d meminfo; echo "resource=$DOCKER_RESOURCE_GPUSLICE"; echo "dir=$(ls /run/gpuslice/slices)"; echo "slice=$GPUSLICE_SLICE"; exec sleep 600' \
        >/dev/null || fail "docker service create failed"
    wait_for 90 swarm_tasks_running 4 ||
        fail "4 replicas did not start: $(swarm_docker service ps --no-trunc "$E2E_SWARM_SERVICE")"
    mapfile -t ids < <(swarm_task_containers)
    for id in "${ids[@]}"; do
        wait_for 30 swarm_container_said "$id" || fail "replica $id printed nothing: $(swarm_docker logs "$id" 2>&1)"
        out=$(swarm_docker logs "$id" 2>&1)
        printf '%s:\n%s\n' "$id" "$out"
        resource=$(sed -n 's/^resource=//p' <<<"$out")
        slice=$(sed -n 's/^slice=//p' <<<"$out")
        [[ -n $resource && $slice == "$resource" ]] || fail "replica $id: Swarm assigned '$resource' but it runs on '$slice'"
        assert_line_in "dir=$slice" "$out" "replica $id's slice directory"
        assert_line_in "total=$HOOK_SLICE_BYTES" "$out" "replica $id's view of its slice"
        seen+=("$slice")
    done
    [[ $(printf '%s\n' "${seen[@]}" | sort -u | tr '\n' ' ') == "slice0 slice1 slice2 slice3 " ]] ||
        fail "the replicas' slices are not the four slices, once each: ${seen[*]}"
    # The fifth replica waits for a free slice.
    state=$(swarm_docker service ps --no-trunc --format '{{.CurrentState}} {{.Error}}' "$E2E_SWARM_SERVICE")
    printf '%s\n' "$state"
    pending=$(grep -c '^Pending' <<<"$state" || true)
    ((pending == 1)) || fail "expected one replica pending for a slice: $state"
    grep -q 'insufficient resources' <<<"$state" || fail "the pending replica does not wait for resources: $state"
    swarm_docker service rm "$E2E_SWARM_SERVICE" >/dev/null
    wait_for 60 swarm_tasks_running 0 || fail "the service's containers did not go"
    local s
    for s in slice0 slice1 slice2 slice3; do
        wait_for 20 slice_idle "$s" || fail "$s not idle after the service was removed"
    done
}
