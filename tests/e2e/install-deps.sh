#!/usr/bin/env bash
# Installs and starts what the end-to-end tests need, as root, on Debian 12 (bookworm):
#   - busybox-static, jq, patchelf and protobuf-compiler (bookworm; protoc builds the CRI test client)
#   - prometheus (bookworm's 2.42; test_metrics.sh starts its own on localhost, not the service)
#   - podman and runc (bookworm; podman 4.3 resolves CDI with --runtime runc)
#   - unless a Docker engine 26+ is already installed (from any package): docker.io and
#     docker-cli 26.x and containerd 1.7 from Debian 13 "trixie" (bookworm's 20.10 has no CDI).
#     trixie is added as an apt source pinned at priority 100, so nothing upgrades from it by
#     itself, and only those three packages are selected from it. Before installing, a dry run
#     (apt-get -s) must show that nothing else comes from trixie; otherwise Docker is left out
#     and the reason recorded.
#   - /etc/docker/daemon.json gets {"features":{"cdi":true}} and "cdi-spec-dirs" with
#     /etc/cdi, /var/run/cdi and the tests' own /run/gpuslice-e2e/cdi, and the runtime
#     "gpuslice" at /var/lib/gpuslice-e2e/bin/gpuslice-runtime (a wrapper each runtime test
#     points at its own build; between tests it runs runc) (merged into an existing file;
#     other keys are kept)
#   - dockerd --iptables=false --bridge=none in the background (log under
#     /var/log/gpuslice-e2e/), or `systemctl restart docker` where systemd runs the machine
#
# Idempotent: when everything is installed it only checks, and starts dockerd if it is down.
# An engine that cannot be installed does not stop the others: what is available is recorded
# in /var/lib/gpuslice-e2e/engines.env, and the tests print "skipped: <reason>" from it.
# Exit status: 0 when it ran through (even with an engine missing), 1 when not run as root.
set -uo pipefail

# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRIXIE_SOURCE=/etc/apt/sources.list.d/gpuslice-e2e-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/gpuslice-e2e-trixie
DAEMON_JSON=/etc/docker/daemon.json
DOCKERD_LOG=$E2E_LOG_DIR/dockerd.log
DOCKERD_OURS=$E2E_RUN_DIR/dockerd.pid # the pid of the dockerd this script started
BOOKWORM_PKGS=(busybox-static jq patchelf podman runc protobuf-compiler prometheus)
TRIXIE_PKGS=(docker.io docker-cli containerd)

say() { printf 'install-deps: %s\n' "$*"; }

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=300)

if [[ $(id -u) -ne 0 ]]; then
    say "must run as root"
    exit 1
fi
started=$SECONDS
mkdir -p "$E2E_STATE_DIR" "$E2E_LOG_DIR" "$E2E_DOCKER_CDI_DIR"

podman_skip=""
docker_skip=""

installed() { # installed PKG: PKG is installed (any version)
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

dockerd_version() {
    dockerd --version 2>/dev/null | sed -n 's/^Docker version \([0-9][^, ]*\).*/\1/p'
}

# A Docker engine new enough for CDI, from any package (docker.io, docker-ce), and a client.
docker_engine_ok() {
    local v
    v=$(dockerd_version)
    [[ -n $v ]] && dpkg --compare-versions "$v" ge "$E2E_MIN_DOCKER" && command -v docker >/dev/null
}

write_if_changed() { # write_if_changed FILE CONTENT: status 0 when the file changed
    local file=$1 content=$2
    [[ -f $file && $(<"$file") == "$content" ]] && return 1
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$content" >"$file"
}

# --- apt ---------------------------------------------------------------------------------------

apt_updated=0
apt_update() {
    ((apt_updated)) && return 0
    say "apt-get update"
    apt-get -q update >"$E2E_LOG_DIR/apt-update.log" 2>&1 ||
        say "apt-get update reported errors (see $E2E_LOG_DIR/apt-update.log); trying with what it got"
    apt_updated=1
}

# The service start that package scripts attempt is blocked while we install (we start the
# daemons ourselves, with our flags); an existing policy-rc.d is left as it is.
POLICY_RC=/usr/sbin/policy-rc.d
policy_rc_ours=0
block_service_starts() {
    [[ -e $POLICY_RC ]] && return 0
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
    policy_rc_ours=1
}
unblock_service_starts() {
    if ((policy_rc_ours)); then rm -f "$POLICY_RC"; fi
    policy_rc_ours=0
}
trap unblock_service_starts EXIT

apt_install() { # apt_install LOGNAME PKG...: status of apt-get install
    local name=$1
    shift
    block_service_starts
    apt-get install "${APT_OPTS[@]}" "$@" >"$E2E_LOG_DIR/apt-$name.log" 2>&1
    local status=$?
    unblock_service_starts
    ((status == 0)) || say "apt-get install $* failed (see $E2E_LOG_DIR/apt-$name.log)"
    return $status
}

# The trixie source goes in before the first apt-get update, so one update serves both releases.
if ! docker_engine_ok; then
    write_if_changed "$TRIXIE_SOURCE" "$(
        cat <<'EOF'
# Added by gpuslice tests/e2e/install-deps.sh for docker.io 26 (CDI); pinned low in
# /etc/apt/preferences.d/gpuslice-e2e-trixie so only explicitly requested packages come from it.
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    )"
    write_if_changed "$TRIXIE_PIN" "$(
        cat <<'EOF'
# Added by gpuslice tests/e2e/install-deps.sh: nothing upgrades from trixie by itself.
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
    )"
fi

missing=()
for pkg in "${BOOKWORM_PKGS[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt_update
    # One at a time only when the group fails, so one broken package does not take the rest.
    if ! apt_install bookworm "${missing[@]}"; then
        for pkg in "${missing[@]}"; do apt_install "$pkg" "$pkg"; done
    fi
fi
installed busybox-static || say "busybox-static missing: every container test will skip"
if ! installed podman || ! installed runc; then
    podman_skip="podman/runc could not be installed from bookworm (see $E2E_LOG_DIR/apt-*.log)"
fi

# Docker 26 from trixie.
if ! docker_engine_ok; then
    apt_update
    # `pkg/trixie` selects just these packages from trixie and resolves the rest from bookworm;
    # `-t trixie` would raise all of trixie and upgrade libc6 to 2.41 (seen on Debian 12.x).
    wanted=()
    for pkg in "${TRIXIE_PKGS[@]}"; do wanted+=("$pkg/trixie"); done
    if ! plan=$(apt-get install -s "${APT_OPTS[@]}" "${wanted[@]}" 2>&1); then
        docker_skip="docker.io from trixie cannot be installed: $(grep -m1 '^E:' <<<"$plan")"
    else
        printf '%s\n' "$plan" >"$E2E_LOG_DIR/apt-docker-plan.log"
        # Lines look like: Inst libc6 [2.36-9] (2.41-12 Debian:13.1/stable [amd64])
        from_trixie=$(awk '/^Inst / && /Debian:13/ {print $2}' <<<"$plan" | sort)
        unexpected=$(comm -23 <(printf '%s\n' "$from_trixie") <(printf '%s\n' "${TRIXIE_PKGS[@]}" | sort))
        if [[ -n $unexpected ]]; then
            docker_skip="installing docker.io from trixie would also take $(tr '\n' ' ' <<<"$unexpected")from trixie; refused (plan in $E2E_LOG_DIR/apt-docker-plan.log)"
        elif ! apt_install docker "${wanted[@]}"; then
            docker_skip="apt-get install ${wanted[*]} failed (see $E2E_LOG_DIR/apt-docker.log)"
        fi
    fi
    if [[ -z $docker_skip ]] && ! docker_engine_ok; then
        docker_skip="no docker $E2E_MIN_DOCKER+ after apt-get (dockerd: '$(dockerd_version)')"
    fi
fi

# --- Docker configuration and daemon -------------------------------------------------------------

docker_conf_changed=0
configure_docker() {
    local current merged
    current='{}'
    if [[ -s $DAEMON_JSON ]]; then
        current=$(<"$DAEMON_JSON")
        jq -e 'type == "object"' >/dev/null 2>&1 <<<"$current" || {
            docker_skip="$DAEMON_JSON is not a JSON object; not touching it"
            return 1
        }
    fi
    # Keep the defaults (/etc/cdi, /var/run/cdi) first: setting cdi-spec-dirs replaces them.
    # Later directories win on equal names, so the tests' specs shadow a real install's.
    # The runtime tests' wrapper: runc until a test points it at gpuslice-runtime.
    if [[ ! -x $E2E_RUNTIME_WRAPPER ]]; then
        mkdir -p "$(dirname "$E2E_RUNTIME_WRAPPER")"
        printf '#!/bin/sh\nexec runc "$@"\n' >"$E2E_RUNTIME_WRAPPER"
        chmod 755 "$E2E_RUNTIME_WRAPPER"
    fi
    merged=$(jq --indent 2 --arg dir "$E2E_DOCKER_CDI_DIR" --arg runtime "$E2E_RUNTIME_WRAPPER" '
        .features.cdi = true
        | .["cdi-spec-dirs"] = ((.["cdi-spec-dirs"] // ["/etc/cdi", "/var/run/cdi"]) - [$dir] + [$dir])
        | .runtimes.gpuslice = {"path": $runtime}
        ' <<<"$current") || {
        docker_skip="could not merge $DAEMON_JSON"
        return 1
    }
    if [[ $(jq -S . <<<"$current") != "$(jq -S . <<<"$merged")" ]]; then
        # The operator's original is kept once, never overwritten by a later run.
        [[ -f $DAEMON_JSON && ! -e $DAEMON_JSON.before-gpuslice-e2e ]] &&
            cp -p "$DAEMON_JSON" "$DAEMON_JSON.before-gpuslice-e2e"
        mkdir -p "$(dirname "$DAEMON_JSON")"
        printf '%s\n' "$merged" >"$DAEMON_JSON.tmp" && mv "$DAEMON_JSON.tmp" "$DAEMON_JSON"
        say "updated $DAEMON_JSON"
        docker_conf_changed=1
    fi
}

docker_answers() { e2e_docker info >/dev/null 2>&1; }

dockerd_pid() {
    local pid
    pid=$(cat /run/docker.pid 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] && printf '%s\n' "$pid"
}

start_dockerd() {
    if [[ -d /run/systemd/system ]] && systemctl cat docker.service >/dev/null 2>&1; then
        say "systemctl restart docker"
        systemctl restart docker || return 1
    else
        local pid
        if pid=$(dockerd_pid); then
            # Only a dockerd this script started is restarted; someone else's is left alone.
            if [[ $(cat "$DOCKERD_OURS" 2>/dev/null) != "$pid" ]]; then
                docker_skip="dockerd $pid was not started by install-deps.sh and runs without $DAEMON_JSON's CDI settings; restart it"
                return 1
            fi
            say "stopping dockerd $pid to apply $DAEMON_JSON"
            kill "$pid"
            wait_for 30 bash -c "! kill -0 $pid" || { say "dockerd $pid does not stop"; return 1; }
        fi
        say "starting dockerd --iptables=false --bridge=none (log $DOCKERD_LOG)"
        printf '\n=== %s install-deps.sh starts dockerd\n' "$(date -Is)" >>"$DOCKERD_LOG"
        # Without inherited descriptors: a daemon holding the caller's lock file (a run under
        # `flock`) would keep that lock for its whole life.
        (
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}
                ((fd > 2)) && eval "exec $fd>&-"
            done
            exec setsid -f dockerd --iptables=false --bridge=none >>"$DOCKERD_LOG" 2>&1 </dev/null
        )
        wait_for 30 dockerd_pid && dockerd_pid >"$DOCKERD_OURS"
    fi
    if ! wait_for 60 docker_answers; then
        say "dockerd did not answer within 60s; last lines of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" 2>/dev/null | sed 's/^/  /'
        return 1
    fi
}

if [[ -z $docker_skip ]] && configure_docker; then
    dirs=$(e2e_docker info --format '{{json .CDISpecDirs}}' 2>/dev/null)
    if ! docker_answers || ((docker_conf_changed)) || [[ $dirs != *"\"$E2E_DOCKER_CDI_DIR\""* ]]; then
        start_dockerd || docker_skip=${docker_skip:-"dockerd does not start (see $DOCKERD_LOG)"}
    fi
fi
if [[ -z $docker_skip ]]; then
    version=$(e2e_docker version --format '{{.Server.Version}}' 2>/dev/null)
    dpkg --compare-versions "${version:-0}" ge "$E2E_MIN_DOCKER" ||
        docker_skip="running docker daemon is ${version:-unknown}, older than $E2E_MIN_DOCKER"
fi

# --- record --------------------------------------------------------------------------------------

{
    printf '# written by tests/e2e/install-deps.sh on %s; empty means available\n' "$(date -Is)"
    printf 'E2E_PODMAN_SKIP=%q\n' "$podman_skip"
    printf 'E2E_DOCKER_SKIP=%q\n' "$docker_skip"
} >"$E2E_ENGINES_FILE.tmp" && mv "$E2E_ENGINES_FILE.tmp" "$E2E_ENGINES_FILE"

if [[ -z $podman_skip ]]; then
    say "podman $(podman version --format '{{.Client.Version}}' 2>/dev/null), $(runc --version | head -n1)"
else
    say "podman: unavailable: $podman_skip"
fi
if [[ -z $docker_skip ]]; then
    say "docker $(e2e_docker version --format '{{.Server.Version}}'), CDI spec dirs $(e2e_docker info --format '{{json .CDISpecDirs}}')"
else
    say "docker: unavailable: $docker_skip"
fi
say "busybox: $(static_busybox || echo missing)"
say "done in $((SECONDS - started))s; recorded in $E2E_ENGINES_FILE"
