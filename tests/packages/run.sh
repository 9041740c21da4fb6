#!/usr/bin/env bash
# The packages' tier (`make packages-test`, part of `make test`), as root on Debian 12:
#   build     `make packages`: both files exist
#   lintian   no error and no warning left (the deliberate ones are overridden in
#             packaging/lintian/gpuslice, each with its reason)
#   rpmlint   no error (filters with reasons: packaging/rpm/rpmlint.toml)
#   rpm-query the .rpm's file list, %config(noreplace) and scriptlets through `rpm -qp`
#   rpm-root  the .rpm installs into a scratch root with `rpm --root` and erases cleanly
#   deb-root  the .deb installs, runs and purges in a clean Debian root (debootstrap, imported
#             into Docker), twice installed (idempotent), leaving nothing behind
# --install first installs the tools: lintian rpmlint rpm debootstrap (apt), cargo-deb and
# cargo-generate-rpm (cargo install). A check that cannot run prints `skipped: <reason>`.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB=target/debian/gpuslice_${VERSION}_amd64.deb
RPM=target/generate-rpm/gpuslice-${VERSION}-1.x86_64.rpm
ROOTFS_CACHE=/var/cache/gpuslice-pkgtest/bookworm-minbase.tar
IMAGE=gpuslice-pkgtest/bookworm:latest
T=$(mktemp -d /tmp/gpuslice-pkgtest.XXXXXX)
trap 'rm -rf "$T"' EXIT

passed=0 failed=0 skipped=0
ok() { printf 'packages: %-10s ok\n' "$1"; passed=$((passed + 1)); }
bad() { printf 'packages: %-10s FAILED: %s\n' "$1" "$2"; failed=$((failed + 1)); }
# Under GPUSLICE_NO_SKIP=1 (`make test` as root, as in CI) a check that cannot run fails instead.
skip() {
    if [[ ${GPUSLICE_NO_SKIP:-} == 1 ]]; then
        bad "$1" "cannot run here ($2), and GPUSLICE_NO_SKIP=1 says every check must run"
    else
        printf 'packages: %-10s skipped: %s\n' "$1" "$2"
        skipped=$((skipped + 1))
    fi
}

if [[ ${1:-} == --install ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        missing=()
        for tool in lintian rpmlint rpm debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
        if ((${#missing[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
                { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                    --no-install-recommends "${missing[@]}" >/dev/null; } || echo "packages: apt-get install ${missing[*]} failed"
        fi
    fi
    for tool in cargo-deb cargo-generate-rpm; do
        command -v "$tool" >/dev/null || cargo install --locked "$tool" || echo "packages: cargo install $tool failed"
    done
fi

# build
if ! command -v cargo-deb >/dev/null || ! command -v cargo-generate-rpm >/dev/null; then
    skip build "cargo-deb or cargo-generate-rpm missing (run with --install)"
    echo "packages: $passed passed, $failed failed, $skipped skipped"
    [[ $failed -eq 0 ]]
    exit
fi
if make --no-print-directory packages >"$T/build.log" 2>&1 && [[ -f $DEB && -f $RPM ]]; then
    ok build
else
    tail -n 20 "$T/build.log"
    bad build "make packages"
    echo "packages: $passed passed, $failed failed, $skipped skipped"
    exit 1
fi

# lintian
if ! command -v lintian >/dev/null; then
    skip lintian "lintian not installed (run with --install)"
else
    lintian --tag-display-limit 0 "$DEB" >"$T/lintian" 2>&1
    if grep -E '^[EW]: ' "$T/lintian"; then bad lintian "errors or warnings above"; else ok lintian; fi
fi

# rpmlint
if ! command -v rpmlint >/dev/null; then
    skip rpmlint "rpmlint not installed (run with --install)"
else
    rpmlint -c packaging/rpm/rpmlint.toml "$RPM" >"$T/rpmlint" 2>&1
    if grep -q ' 0 errors' "$T/rpmlint"; then ok rpmlint; else cat "$T/rpmlint"; bad rpmlint "errors above"; fi
fi

FILES=(/usr/bin/gpuslice-cdi /usr/bin/gpuslice-hook /usr/bin/gpuslice-runtime /usr/bin/gpuslice-device-plugin
    /usr/lib/gpuslice/libgpuslice.so
    /etc/gpuslice/config.toml /usr/share/containers/oci/hooks.d/gpuslice.json
    /usr/lib/systemd/system/gpuslice-generate.service /usr/lib/systemd/system/gpuslice-generate.path
    /usr/lib/systemd/system/gpuslice.service /usr/lib/systemd/system/gpuslice-device-plugin.service
    /usr/lib/tmpfiles.d/gpuslice.conf /usr/lib/udev/rules.d/71-gpuslice.rules
    /usr/share/man/man8/gpuslice-cdi.8.gz /usr/share/man/man8/gpuslice-hook.8.gz /usr/share/man/man8/gpuslice-runtime.8.gz
    /usr/share/man/man8/gpuslice-device-plugin.8.gz
    /usr/share/gpuslice/grafana/gpuslice-dashboard.json)

# rpm-query
if ! command -v rpm >/dev/null; then
    skip rpm-query "rpm not installed (run with --install)"
    skip rpm-root "rpm not installed (run with --install)"
else
    why=""
    rpm -qpl "$RPM" >"$T/rpmfiles" 2>/dev/null
    for f in "${FILES[@]}"; do grep -qx "$f" "$T/rpmfiles" || why+=" missing $f;"; done
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" 2>/dev/null | grep -qx 'cn /etc/gpuslice/config.toml' ||
        why+=" config.toml not %config(noreplace);"
    rpm -qp --scripts "$RPM" >"$T/scripts" 2>/dev/null
    for want in 'postinstall scriptlet' 'systemctl enable gpuslice-generate.service' 'preuninstall scriptlet' \
        'disable --now gpuslice.service gpuslice-generate.path gpuslice-generate.service' 'gpuslice.yaml' \
        'rm -rf /run/gpuslice' 'gpuslice-generate.path gpuslice.service' 'systemctl try-restart gpuslice.service' \
        'disable --now gpuslice-device-plugin.service'; do
        grep -qF -- "$want" "$T/scripts" || why+=" scripts lack '$want';"
    done
    # The hook in the package is the static one.
    rpm2cpio "$RPM" | (mkdir -p "$T/x" && cd "$T/x" && cpio -idm --quiet ./usr/bin/gpuslice-hook)
    file "$T/x/usr/bin/gpuslice-hook" | grep -Eq 'static(-pie)? linked|statically linked' || why+=" hook not static;"
    if [[ -z $why ]]; then ok rpm-query; else bad rpm-query "$why"; fi

    # rpm-root: files only (no /bin/sh in the scratch root to run scriptlets in; they are
    # checked above and their Debian twins run in deb-root).
    root=$T/rpmroot
    why=""
    if rpm --root "$root" --dbpath /var/lib/rpm --initdb && rpm --root "$root" --dbpath /var/lib/rpm -i --nodeps --noscripts "$RPM" 2>"$T/rpmi" >&2; then
        for f in "${FILES[@]}"; do [[ -e $root$f ]] || why+=" missing $f;"; done
        rpm --root "$root" --dbpath /var/lib/rpm -q gpuslice >/dev/null || why+=" not in the rpm db;"
        rpm --root "$root" --dbpath /var/lib/rpm -V --nodeps gpuslice || why+=" rpm -V found changes;"
        rpm --root "$root" --dbpath /var/lib/rpm -e --noscripts gpuslice || why+=" erase failed;"
        left=$(find "$root" -mindepth 1 -not -path "$root/var/lib/rpm*" -not -path "$root/var" \
            -not -path "$root/var/lib" -not -path "$root/usr/lib/sysimage*" -not -path "$root/usr/lib" \
            -not -path "$root/usr" -not -type d)
        [[ -z $left ]] || why+=" left behind: $left;"
    else
        why="rpm -i failed: $(cat "$T/rpmi")"
    fi
    if [[ -z $why ]]; then ok rpm-root; else bad rpm-root "$why"; fi
fi

# deb-root
deb_root() {
    [[ $(id -u) -eq 0 ]] || { skip deb-root "needs root"; return; }
    if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
        skip deb-root "no Docker daemon running"
        return
    fi
    if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        if [[ ! -f $ROOTFS_CACHE ]]; then
            command -v debootstrap >/dev/null || { skip deb-root "debootstrap not installed (run with --install)"; return; }
            mkdir -p "$(dirname "$ROOTFS_CACHE")"
            if ! debootstrap --variant=minbase bookworm "$T/rootfs" http://deb.debian.org/debian >"$T/debootstrap.log" 2>&1; then
                skip deb-root "debootstrap of bookworm failed (no mirror?): $(tail -n 1 "$T/debootstrap.log")"
                return
            fi
            tar -C "$T/rootfs" -cf "$ROOTFS_CACHE.tmp" . && mv "$ROOTFS_CACHE.tmp" "$ROOTFS_CACHE"
        fi
        docker import --change 'CMD ["/bin/bash"]' "$ROOTFS_CACHE" "$IMAGE" >/dev/null ||
            { bad deb-root "docker import failed"; return; }
    fi
    cp "$DEB" "$T/gpuslice.deb"
    if docker run --rm --network none -v "$T/gpuslice.deb:/pkg/gpuslice.deb:ro" \
        -v "$REPO/tests/packages/in-root.sh:/in-root.sh:ro" "$IMAGE" bash /in-root.sh >"$T/deb-root.log" 2>&1; then
        ok deb-root
    else
        sed 's/^/    /' "$T/deb-root.log"
        bad deb-root "install, run or purge in a clean bookworm root (log above)"
    fi
}
deb_root

echo "packages: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
