# gpuslice %post: slice state dir, units enabled on first install, the path unit started, the
# spec written right away when the NVIDIA driver answers, and the host guard (re)started.
# Idempotent.
systemd-tmpfiles --create /usr/lib/tmpfiles.d/gpuslice.conf >/dev/null 2>&1 || :
[ -d /run/gpuslice ] || install -d -m 0755 /run/gpuslice
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    udevadm control --reload-rules >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable gpuslice-generate.service gpuslice-generate.path gpuslice.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl start gpuslice-generate.path >/dev/null 2>&1 || :
fi
if [ -e /sys/module/nvidia ] && /usr/bin/gpuslice-cdi list >/dev/null 2>&1; then
    /usr/bin/gpuslice-cdi generate || echo "gpuslice: 'gpuslice-cdi generate' failed (message above); fix it and run it again" >&2
else
    echo "gpuslice: no NVIDIA driver answered (NVML not available), so no CDI spec was written."
    echo "gpuslice: once the driver is loaded run 'gpuslice-cdi generate'; gpuslice-generate.service does it at boot."
fi
# The host guard: started on a first install, restarted on an upgrade (the new binary). It does
# not start without the NVIDIA module (ConditionPathExists); the udev rule starts it later.
if [ -d /run/systemd/system ]; then
    if [ "$1" -eq 1 ]; then
        systemctl start gpuslice.service >/dev/null 2>&1 || :
    else
        systemctl try-restart gpuslice.service >/dev/null 2>&1 || :
    fi
fi
echo "gpuslice: turn CDI on in your container engine once with: gpuslice-cdi setup docker|containerd|podman"
exit 0
