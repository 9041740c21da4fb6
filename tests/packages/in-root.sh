#!/usr/bin/env bash
# Runs inside a clean Debian 12 container (tests/packages/run.sh, deb-root): install the .deb
# twice, run it, purge it, and compare the filesystem with what it was before.
set -euo pipefail
snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /var/lib/dpkg -o -path /var/log \
        -o -path /var/cache -o -path /pkg -o -path /tmp -o -path /var/lib/apt \) -prune -o -print | sort
}
snapshot >/tmp/before
dpkg -i /pkg/gpuslice.deb
dpkg -i /pkg/gpuslice.deb    # again: the maintainer scripts are idempotent
gpuslice-cdi --version
gpuslice-hook --help >/dev/null
# gpuslice-runtime as podman's hooks.d runs it (the installed hook file's path and arguments):
# a container that asks for no slice passes unchanged; one that asks before any spec exists is
# refused with the line that says what to do.
grep -q '"path": "/usr/bin/gpuslice-runtime"' /usr/share/containers/oci/hooks.d/gpuslice.json
test "$(echo '{"process":{"env":[]}}' | gpuslice-runtime precreate-hook)" = '{"process":{"env":[]}}'
if echo '{"annotations":{"gpuslice.dev/slices":"slice0"}}' | gpuslice-runtime precreate-hook 2>/tmp/runtime-err; then
    echo "gpuslice-runtime accepted a slice with no spec"
    exit 1
fi
grep -q 'run gpuslice-cdi generate' /tmp/runtime-err
gpuslice-device-plugin --help >/dev/null
for page in gpuslice-cdi gpuslice-hook gpuslice-runtime gpuslice-device-plugin; do test -s "/usr/share/man/man8/$page.8.gz"; done
gpuslice-cdi setup podman
test -d /run/gpuslice
dpkg-query -W -f='${Conffiles}\n' gpuslice | grep -q /etc/gpuslice/config.toml
test -L /etc/systemd/system/multi-user.target.wants/gpuslice-generate.service
test -L /etc/systemd/system/multi-user.target.wants/gpuslice-generate.path
test -L /etc/systemd/system/multi-user.target.wants/gpuslice.service
# The device plugin's unit is installed for kubelet-managed nodes, not enabled.
test -f /usr/lib/systemd/system/gpuslice-device-plugin.service
test ! -e /etc/systemd/system/multi-user.target.wants/gpuslice-device-plugin.service
gpuslice-cdi daemon --help >/dev/null
# A spec "generated" earlier goes away on removal.
mkdir -p /var/run/cdi && echo 'stale' >/var/run/cdi/gpuslice.yaml
dpkg -r gpuslice
test ! -e /var/run/cdi/gpuslice.yaml
test -e /etc/gpuslice/config.toml    # a removed (not purged) package keeps its conffile
dpkg -P gpuslice
rmdir /var/run/cdi
snapshot >/tmp/after
if ! diff /tmp/before /tmp/after; then
    echo "left behind or removed (above)"
    exit 1
fi
echo "in-root: installed twice, ran, removed, purged; nothing left behind"
