# shellcheck shell=bash
# Fixtures of the hook's end-to-end tests, sourced by lib.sh (definitions only, no side effects):
#   make_driver_root DIR [FAKEGPU_TOML]      a simulated NVIDIA driver root (libraries, ld.so.cache,
#                                            nvidia-smi, /proc/driver/nvidia/gpus)
#   build_cuda_probe [OUTDIR]                tests/cuda-probe built once per probe.c; prints its dir
#   make_glibc_rootfs DIR [--no-ldconfig]    busybox + glibc + cuda-probe, no driver library
#   e2e_glibc_image [--no-ldconfig]          that rootfs as a Docker image, once per content
#   fakegpu_run_args STATE_DIR [FAKEGPU_TOML] engine arguments giving a container the simulated GPU
#   make_runc_bundle DIR ROOTFS -- CMD...    a runc bundle; runc_bundle_add_{hook,device,bind,env}
#   runc_run DIR ID                          runs it, prints stdout, always deletes the container
#   make_hostile_rootfs DIR KIND VICTIM      a glibc rootfs with one symlink attack on a host dir
#   victim_snapshot VICTIM                   a listing of VICTIM to compare before and after
# The jq filters below name jq's variables ($path, …) in single quotes, on purpose:
# shellcheck disable=SC2016

# The simulated GPUs of the tests, and where a driver root keeps its libraries.
E2E_FAKEGPU_TOML=$E2E_DIR/fixtures/fakegpu.toml
E2E_DRIVER_LIBDIR=usr/lib/x86_64-linux-gnu
E2E_PROBE_SRC=$REPO_ROOT/tests/cuda-probe
# runc state of the bundles the tests run directly, apart from Docker's and podman's.
E2E_RUNC_ROOT=$E2E_RUN_DIR/runc
E2E_GLIBC_IMAGE=gpuslice-e2e/glibc

# ---------------------------------------------------------------------------------------------
# The simulated GPU's config

# fakegpu_driver_version [FAKEGPU_TOML]: its driver_version (580.95.05 when it has none).
fakegpu_driver_version() {
    local toml=${1:-$E2E_FAKEGPU_TOML} v
    v=$(sed -n 's/^[[:space:]]*driver_version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$toml" | head -n1)
    printf '%s\n' "${v:-580.95.05}"
}

# fakegpu_gpus [FAKEGPU_TOML]: one tab-separated line per [[gpu]]: index, minor, uuid,
# pci_bus_id (as written, NVML's 00000000:01:00.0 form), name. [[gpu.mig]] tables are skipped.
fakegpu_gpus() {
    local toml=${1:-$E2E_FAKEGPU_TOML}
    awk '
        function value(line) {
            sub(/^[^=]*=[[:space:]]*/, "", line)
            if (line ~ /^"/) { sub(/^"/, "", line); sub(/".*$/, "", line) }
            else { sub(/[[:space:]]*(#.*)?$/, "", line) }
            return line
        }
        function flush() {
            if (in_gpu) printf "%d\t%s\t%s\t%s\t%s\n", n++, minor, uuid, bus, name
            in_gpu = 0; minor = uuid = bus = name = ""
        }
        /^[[:space:]]*\[/ { flush(); if ($0 ~ /^[[:space:]]*\[\[[[:space:]]*gpu[[:space:]]*\]\]/) in_gpu = 1; next }
        !in_gpu { next }
        /^[[:space:]]*uuid[[:space:]]*=/ { uuid = value($0) }
        /^[[:space:]]*name[[:space:]]*=/ { name = value($0) }
        /^[[:space:]]*minor[[:space:]]*=/ { minor = value($0) }
        /^[[:space:]]*pci_bus_id[[:space:]]*=/ { bus = value($0) }
        END { flush() }
    ' "$toml"
}

# proc_bus_id BUSID: NVML's 00000000:3B:00.0 as the kernel and /proc/driver/nvidia name it,
# 0000:3b:00.0 (4-digit domain, lower case).
proc_bus_id() {
    local id=${1,,}
    local domain=${id%%:*}
    printf '%s:%s\n' "${domain: -4}" "${id#*:}"
}

# ---------------------------------------------------------------------------------------------
# A simulated driver root

# make_driver_root DIR [FAKEGPU_TOML]: DIR laid out like a host with NVIDIA's driver installed,
# the libraries being copies of libfakegpu.so:
#   usr/lib/x86_64-linux-gnu/libcuda.so.<ver>, libnvidia-ml.so.<ver>,
#     libnvidia-ptxjitcompiler.so.<ver>: distinct copies (own inodes), SONAME set to the .so.1
#     name (with patchelf; without it they have none and the cache also lists the versioned names)
#   libcuda.so.1 -> libcuda.so.<ver>, libcuda.so -> libcuda.so.1, libnvidia-ml.so.1 -> …,
#     libnvidia-ptxjitcompiler.so.1 -> …
#   etc/ld.so.conf(.d) as on Debian, etc/ld.so.cache from the host's `ldconfig -r DIR`
#   usr/bin/nvidia-smi: a simulated stand-in (a shell script running `cuda-probe nvml-meminfo`)
#   proc/driver/nvidia/gpus/<bus id>/information per GPU of the config, in the driver's format
# <ver> is the config's driver_version. Needs $E2E_FAKEGPU_LIB built.
make_driver_root() {
    local root=$1 toml=${2:-$E2E_FAKEGPU_TOML} ver lib libdir name idx minor uuid bus model dir
    [[ -f $E2E_FAKEGPU_LIB ]] || fail "make_driver_root: $E2E_FAKEGPU_LIB not built"
    [[ -f $toml ]] || fail "make_driver_root: no config $toml"
    ver=$(fakegpu_driver_version "$toml")
    libdir=$root/$E2E_DRIVER_LIBDIR
    mkdir -p "$libdir" "$root/etc" "$root/usr/bin" "$root/proc/driver/nvidia/gpus"
    command -v patchelf >/dev/null ||
        e2e_log "make_driver_root: no patchelf (install-deps.sh installs it): the libraries have no SONAME"
    for lib in libcuda libnvidia-ml libnvidia-ptxjitcompiler; do
        cp "$E2E_FAKEGPU_LIB" "$libdir/$lib.so.$ver"
        chmod 755 "$libdir/$lib.so.$ver"
        if command -v patchelf >/dev/null; then
            patchelf --set-soname "$lib.so.1" "$libdir/$lib.so.$ver" || fail "patchelf --set-soname $lib.so.1 failed"
        fi
        ln -sfn "$lib.so.$ver" "$libdir/$lib.so.1"
    done
    ln -sfn libcuda.so.1 "$libdir/libcuda.so"
    write_debian_ld_so_conf "$root"
    ldconfig -r "$root" || fail "ldconfig -r $root failed"

    cat >"$root/usr/bin/nvidia-smi" <<'EOF'
#!/bin/sh
# SIMULATED nvidia-smi of gpuslice's end-to-end tests; not NVIDIA's tool. It only shows the
# memory of one GPU as NVML reports it, through cuda-probe when the container has it.
echo "nvidia-smi: simulated by the gpuslice test fixtures (NVML memory view via cuda-probe)"
for probe in cuda-probe /usr/local/bin/cuda-probe; do
    if command -v "$probe" >/dev/null 2>&1; then exec "$probe" nvml-meminfo "$@"; fi
done
echo "nvidia-smi (simulated): no cuda-probe in this container" >&2
exit 1
EOF
    chmod 755 "$root/usr/bin/nvidia-smi"

    while IFS=$'\t' read -r idx minor uuid bus name; do
        [[ -n $uuid && -n $minor && -n $bus ]] || fail "make_driver_root: GPU $idx of $toml lacks uuid, minor or pci_bus_id"
        bus=$(proc_bus_id "$bus")
        model=${name:-NVIDIA H100 80GB HBM3}
        dir=$root/proc/driver/nvidia/gpus/$bus
        mkdir -p "$dir"
        # The layout of the driver's own file (nv-procfs.c): key, colon, tabs, a space, value.
        {
            printf 'Model: \t\t %s\n' "$model"
            printf 'IRQ:   \t\t %d\n' $((150 + idx))
            printf 'GPU UUID: \t %s\n' "$uuid"
            printf 'Video BIOS: \t %s\n' 96.00.99.00.01
            printf 'Bus Type: \t %s\n' PCIe
            printf 'DMA Size: \t %s\n' '52 bits'
            printf 'DMA Mask: \t %s\n' 0xfffffffffffff
            printf 'Bus Location: \t %s\n' "$bus"
            printf 'Device Minor: \t %s\n' "$minor"
            printf 'GPU Firmware: \t %s\n' "$ver"
            printf 'GPU Excluded:\t %s\n' No
        } >"$dir/information"
    done < <(fakegpu_gpus "$toml")
}

# write_debian_ld_so_conf ROOT: /etc/ld.so.conf and ld.so.conf.d/ as Debian 12 ships them.
write_debian_ld_so_conf() {
    local root=$1
    mkdir -p "$root/etc/ld.so.conf.d"
    printf 'include /etc/ld.so.conf.d/*.conf\n\n' >"$root/etc/ld.so.conf"
    printf '# libc default configuration\n/usr/local/lib\n' >"$root/etc/ld.so.conf.d/libc.conf"
    printf '# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' \
        >"$root/etc/ld.so.conf.d/x86_64-linux-gnu.conf"
}

# ---------------------------------------------------------------------------------------------
# cuda-probe

# build_cuda_probe [OUTDIR]: tests/cuda-probe built against a simulated driver root, once per
# content of probe.c, build.sh and the generated gpuslice_cuda_abi.h (and compiler and glibc), cached under
# $E2E_STATE_DIR/cuda-probe/<hash>. Prints the directory holding cuda-probe and
# cuda-probe-direct: OUTDIR (a copy) when given and not empty, else the cache (read-only use).
build_cuda_probe() {
    local out=${1:-} key cache tmp
    key=$({
        cat "$E2E_PROBE_SRC/probe.c" "$E2E_PROBE_SRC/build.sh" "$REPO_ROOT/cuda-abi/include/gpuslice_cuda_abi.h"
        "${CC:-cc}" --version 2>/dev/null | head -n1
        ldd --version 2>/dev/null | head -n1
        printf 'CFLAGS=%s\n' "${CFLAGS:-}"
    } | sha256sum | cut -c1-16)
    cache=$E2E_STATE_DIR/cuda-probe/$key
    if [[ ! -x $cache/cuda-probe || ! -x $cache/cuda-probe-direct ]]; then
        mkdir -p "$E2E_STATE_DIR/cuda-probe"
        tmp=$(mktemp -d "$E2E_STATE_DIR/cuda-probe/.build.XXXXXX")
        make_driver_root "$tmp/driver" >&2
        if ! bash "$E2E_PROBE_SRC/build.sh" "$tmp/out" "$tmp/driver/$E2E_DRIVER_LIBDIR" >&2; then
            rm -rf "$tmp"
            fail "tests/cuda-probe/build.sh failed"
        fi
        rm -rf "$cache"
        mv "$tmp/out" "$cache"
        rm -rf "$tmp"
    fi
    if [[ -n $out ]]; then
        mkdir -p "$out"
        cp "$cache/cuda-probe" "$cache/cuda-probe-direct" "$out/"
        printf '%s\n' "$out"
    else
        printf '%s\n' "$cache"
    fi
}

# ---------------------------------------------------------------------------------------------
# glibc images

# copy_host_file ROOT PATH: PATH copied into ROOT at the same path, symlinks (and the files
# they lead to) included, the way the host has them.
copy_host_file() {
    local root=$1 path=$2 target
    [[ -e $root$path || -L $root$path ]] && return 0
    mkdir -p "$root$(dirname "$path")"
    if [[ -L $path ]]; then
        target=$(readlink "$path")
        ln -s "$target" "$root$path"
        [[ $target == /* ]] || target=$(dirname "$path")/$target
        copy_host_file "$root" "$(realpath -ms "$target")"
    else
        cp -p "$path" "$root$path"
    fi
}

# make_glibc_rootfs DIR [--no-ldconfig]: a minimal image with glibc: make_busybox_rootfs, the
# merged-/usr links of the host (/lib -> usr/lib, /lib64 -> usr/lib64 on Debian 12), the
# cuda-probe builds in /usr/local/bin (cuda-probe, and cuda-probe-direct, which needs the
# driver's libcuda.so.1 and libnvidia-ml.so.1 to start), the libraries they and the simulated
# driver need (libc, libgcc_s) and the dynamic loader at their host paths, /etc/ld.so.conf(.d)
# as on Debian, /sbin/ldconfig copied from the host and /etc/ld.so.cache from `ldconfig -r DIR`.
# With --no-ldconfig there is neither /sbin/ldconfig nor /etc/ld.so.cache. No driver library:
# the hook brings those.
make_glibc_rootfs() {
    local root=$1 ldconfig=1 probe bin lib path
    [[ ${2:-} == --no-ldconfig ]] && ldconfig=0
    [[ $# -le 1 || $2 == --no-ldconfig ]] || fail "make_glibc_rootfs: unknown option $2"
    probe=$(build_cuda_probe "")
    make_busybox_rootfs "$root"
    for lib in lib lib64; do
        if [[ -L /$lib ]]; then
            mkdir -p "$root/usr/$lib"
            ln -sfn "$(readlink "/$lib")" "$root/$lib"
        else
            mkdir -p "$root/$lib"
        fi
    done
    mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/var/cache/ldconfig"
    for bin in cuda-probe cuda-probe-direct; do
        install -m 755 "$probe/$bin" "$root/usr/local/bin/$bin"
    done
    # What the probes and the simulated driver link against (libc, libgcc_s, the loader): a real
    # base image has those, and the driver the hook brings in needs them. ldd prints
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)";
    # the driver's own libraries are "not found" here and left to the hook.
    while read -r path; do
        copy_host_file "$root" "$path"
    done < <(ldd "$probe/cuda-probe" "$probe/cuda-probe-direct" "$E2E_FAKEGPU_LIB" |
        awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && NF > 1 {print $1}' | sort -u)
    write_debian_ld_so_conf "$root"
    if ((ldconfig)); then
        cp /sbin/ldconfig "$root/sbin/ldconfig"
        ldconfig -r "$root" || fail "ldconfig -r $root failed"
        # Its aux-cache records inodes and times, which would make every build's content differ.
        rm -f "$root/var/cache/ldconfig/aux-cache"
    else
        rm -f "$root/sbin/ldconfig" "$root/etc/ld.so.cache"
    fi
}

# rootfs_content_hash DIR: a short hash of DIR's names, types, modes, link targets and contents.
rootfs_content_hash() {
    local dir=$1
    (
        cd "$dir" || exit 1
        find . -printf '%p %y %m %U:%G %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
    ) | sha256sum | cut -c1-12
}

# e2e_glibc_image [--no-ldconfig]: make_glibc_rootfs imported into Docker, once per content;
# prints the tag (gpuslice-e2e/glibc:<hash>, another hash for each variant).
e2e_glibc_image() {
    local dir tag
    dir=$(mktemp -d "$T/glibc-image.XXXXXX")
    make_glibc_rootfs "$dir/rootfs" "$@"
    tag=$E2E_GLIBC_IMAGE:$(rootfs_content_hash "$dir/rootfs")
    if ! e2e_docker image inspect "$tag" >/dev/null 2>&1; then
        docker_image_from_rootfs "$dir/rootfs" "$tag"
    fi
    rm -rf "$dir"
    printf '%s\n' "$tag"
}

# ---------------------------------------------------------------------------------------------
# The simulated GPU in a container

# fakegpu_run_args STATE_DIR [FAKEGPU_TOML]: docker/podman run arguments, one per line (for
# mapfile), that give a container the simulated GPU: the config read-only at
# /fakegpu/config.toml, STATE_DIR (created if missing) at /fakegpu/state, and FAKEGPU_CONFIG,
# FAKEGPU_STATE_DIR naming them. Containers given the same STATE_DIR see the same GPUs.
fakegpu_run_args() {
    local state=$1 toml=${2:-$E2E_FAKEGPU_TOML}
    [[ -f $toml ]] || fail "fakegpu_run_args: no config $toml"
    mkdir -p "$state"
    printf '%s\n' \
        -v "$(realpath "$toml"):/fakegpu/config.toml:ro" \
        -v "$(realpath "$state"):/fakegpu/state" \
        -e FAKEGPU_CONFIG=/fakegpu/config.toml \
        -e FAKEGPU_STATE_DIR=/fakegpu/state
}

# ---------------------------------------------------------------------------------------------
# runc bundles

# bundle_edit DIR JQ-FILTER [jq options...]: rewrite DIR/config.json through jq. The options
# come after the filter, so `--args -- WORDS...` can end them ($ARGS.positional; the `--` keeps
# a word such as -c from being read as jq's option).
bundle_edit() {
    local dir=$1 filter=$2
    shift 2
    jq "$filter" "$@" <"$dir/config.json" >"$dir/config.json.tmp" || fail "editing $dir/config.json failed"
    mv "$dir/config.json.tmp" "$dir/config.json"
}

# make_runc_bundle DIR ROOTFS -- CMD...: DIR/config.json from `runc spec`, with root.path
# ROOTFS (absolute, writable), no terminal, process args CMD; runc's default namespaces
# (a network namespace with only lo) and capabilities.
make_runc_bundle() {
    local dir=$1 rootfs=$2
    [[ ${3:-} == -- ]] || fail "usage: make_runc_bundle DIR ROOTFS -- CMD..."
    shift 3
    (($#)) || fail "make_runc_bundle: no command"
    command -v jq >/dev/null || fail "make_runc_bundle: jq not installed (tests/e2e/install-deps.sh installs it)"
    mkdir -p "$dir"
    rm -f "$dir/config.json"
    (cd "$dir" && runc spec) || fail "runc spec failed"
    bundle_edit "$dir" '.root.path = $root | .root.readonly = false | .process.terminal = false
        | .process.args = $ARGS.positional' --arg root "$(realpath "$rootfs")" --args -- "$@"
}

# runc_bundle_add_hook DIR STAGE PATH ARGS...: an OCI hook (createContainer, poststop, or any
# other stage) with args [PATH, ARGS...] and a PATH in its environment.
runc_bundle_add_hook() {
    local dir=$1 stage=$2 path=$3
    shift 3
    case $stage in
        prestart | createRuntime | createContainer | startContainer | poststart | poststop) ;;
        *) fail "runc_bundle_add_hook: unknown stage $stage" ;;
    esac
    bundle_edit "$dir" '.hooks[$stage] += [{path: $path, args: ([$path] + $ARGS.positional),
        env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]' --arg stage "$stage" --arg path "$path" --args -- "$@"
}

# runc_bundle_add_device DIR PATH TYPE MAJOR MINOR: a device node (c, b or p) made in the
# container, mode 0666, and allowed by the device cgroup.
runc_bundle_add_device() {
    local dir=$1 path=$2 type=$3 major=$4 minor=$5
    bundle_edit "$dir" '.linux.devices += [{path: $path, type: $type, major: $major, minor: $minor,
            fileMode: 438, uid: 0, gid: 0}]
        | .linux.resources.devices += [{allow: true, type: $type, major: $major, minor: $minor, access: "rwm"}]' \
        --arg path "$path" --arg type "$type" --argjson major "$major" --argjson minor "$minor"
}

# runc_bundle_add_state_devices DIR STATE_DIR SLICE UUID: the device nodes of a slice's region
# and its GPU's board (zram devices made by gpuslice-cdi generate) in the bundle's device cgroup,
# as a CDI spec gives them, under /dev/gpuslice/.
runc_bundle_add_state_devices() {
    local dir=$1 state=$2 slice=$3 uuid=$4 node path
    for node in "slices/$slice/region" "gpus/$uuid/board"; do
        path=$state/$node
        [[ -b $path ]] || fail "$path is not a block device (gpuslice-cdi generate makes it)"
        runc_bundle_add_device "$dir" "/dev/gpuslice/$node" b "$((16#$(stat -c %t "$path")))" "$((16#$(stat -c %T "$path")))"
    done
}

# remove_state_devices STATE_DIR: removes the zram devices of the block device nodes under
# STATE_DIR (gpuslice-cdi generate makes one per slice region and per GPU board), waiting up to
# 10 s for containers still exiting to close them. Run it (deferred) after every container.
remove_state_devices() {
    local state=$1 node dev id deadline=$((SECONDS + 10))
    [[ -d $state ]] || return 0
    while IFS= read -r node; do
        dev=$((16#$(stat -c %t "$node"))):$((16#$(stat -c %T "$node")))
        id=$(basename "$(readlink "/sys/dev/block/$dev" 2>/dev/null)")
        [[ $id == zram* ]] || continue
        until echo "${id#zram}" >/sys/class/zram-control/hot_remove 2>/dev/null; do
            ((SECONDS < deadline)) || { e2e_log "could not remove $id ($node): still open"; break; }
            sleep 0.2
        done
    done < <(find "$state" -type b 2>/dev/null)
}

# runc_bundle_add_bind DIR SRC DST [ro]: a bind mount of host SRC at DST in the container.
runc_bundle_add_bind() {
    local dir=$1 src=$2 dst=$3 ro=${4:-}
    [[ -z $ro || $ro == ro ]] || fail "runc_bundle_add_bind: 4th argument must be 'ro'"
    bundle_edit "$dir" '.mounts += [{destination: $dst, type: "bind", source: $src,
        options: (["rbind", "rprivate"] + (if $ro == "ro" then ["ro"] else [] end))}]' \
        --arg src "$(realpath "$src")" --arg dst "$dst" --arg ro "$ro"
}

# runc_bundle_add_env DIR K=V: set K in the process's environment (replacing an earlier K).
runc_bundle_add_env() {
    local dir=$1 kv=$2
    [[ $kv == *=* ]] || fail "runc_bundle_add_env: expected K=V, got $kv"
    bundle_edit "$dir" '.process.env = ([.process.env[]? | select(startswith($key + "=") | not)] + [$kv])' \
        --arg key "${kv%%=*}" --arg kv "$kv"
}

# runc_run DIR ID: `runc run --bundle DIR ID` without a terminal (runc's state under
# $E2E_RUNC_ROOT). Prints the container's stdout; on failure shows runc's and the container's
# stderr on stderr and returns runc's status. The container is deleted (runc delete -f) either way.
runc_run() {
    local dir=$1 id=$2 status=0 errfile
    errfile=$(mktemp "${T:-/tmp}/runc-$id.stderr.XXXXXX")
    mkdir -p "$E2E_RUNC_ROOT"
    runc --root "$E2E_RUNC_ROOT" run --bundle "$dir" "$id" </dev/null 2>"$errfile" || status=$?
    runc --root "$E2E_RUNC_ROOT" delete -f "$id" >/dev/null 2>&1 || true
    if ((status != 0)); then
        sed "s/^/runc $id: /" "$errfile" >&2
        printf 'runc run %s failed with status %d\n' "$id" "$status" >&2
    elif [[ -s $errfile ]]; then
        sed "s/^/runc $id stderr: /" "$errfile" >&2
    fi
    rm -f "$errfile"
    return "$status"
}

# ---------------------------------------------------------------------------------------------
# Hostile images: each plants one symlink that would make a careless hook write on the host.

# make_hostile_rootfs DIR KIND VICTIM: make_glibc_rootfs DIR with one attack aimed at VICTIM, an
# existing directory on the host (absolute path) that must not change (see victim_snapshot):
#   etc               /etc -> VICTIM (the image's own /etc is gone)
#   preload           /etc/ld.so.preload -> VICTIM/ld.so.preload
#   usr-lib-gpuslice  /usr/lib/gpuslice -> VICTIM
#   run               /run -> VICTIM
#   proc-root         /usr/lib/gpuslice -> /proc/self/root/VICTIM (a magic link in the container)
#   cache             /etc/ld.so.cache -> VICTIM/ld.so.cache
make_hostile_rootfs() {
    local root=$1 kind=$2 victim=$3
    [[ $victim == /* && -d $victim ]] || fail "make_hostile_rootfs: VICTIM must be an existing absolute directory: $victim"
    make_glibc_rootfs "$root"
    case $kind in
        etc) rm -rf "${root:?}/etc" && ln -s "$victim" "$root/etc" ;;
        preload) rm -f "$root/etc/ld.so.preload" && ln -s "$victim/ld.so.preload" "$root/etc/ld.so.preload" ;;
        usr-lib-gpuslice) mkdir -p "$root/usr/lib" && ln -sfn "$victim" "$root/usr/lib/gpuslice" ;;
        run) rm -rf "${root:?}/run" && ln -s "$victim" "$root/run" ;;
        proc-root) mkdir -p "$root/usr/lib" && ln -sfn "/proc/self/root$victim" "$root/usr/lib/gpuslice" ;;
        cache) rm -f "$root/etc/ld.so.cache" && ln -s "$victim/ld.so.cache" "$root/etc/ld.so.cache" ;;
        *) fail "make_hostile_rootfs: unknown kind $kind (etc, preload, usr-lib-gpuslice, run, proc-root, cache)" ;;
    esac
}

# victim_snapshot VICTIM: one line per entry under VICTIM (itself included): path, type, mode,
# owner, size, mtime, link target, and the sha256 of regular files. Compare two snapshots to
# see whether anything was created, removed, written, retargeted or chmod-ed.
victim_snapshot() {
    local victim=$1 path type rest sum
    [[ -d $victim ]] || fail "victim_snapshot: no directory $victim"
    while IFS= read -r -d '' path && IFS= read -r -d '' type && IFS= read -r -d '' rest; do
        sum=-
        [[ $type == f ]] && sum=$(sha256sum <"$victim/$path" | cut -d' ' -f1)
        printf '%q %s %s %s\n' "${path:-.}" "$type" "$rest" "$sum"
    done < <(find "$victim" -printf '%P\0%y\0%m %U:%G %s %T@ -> %l\0') | LC_ALL=C sort
}

# require_probe_build: skips unless cuda-probe can be built (a C compiler and the simulated
# driver, which its direct build links against).
require_probe_build() {
    require_file "$E2E_FAKEGPU_LIB" "the simulated GPU"
    command -v "${CC:-cc}" >/dev/null || skip "no C compiler (${CC:-cc}) to build tests/cuda-probe"
}
